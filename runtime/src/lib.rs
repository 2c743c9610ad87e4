//! # shoal-runtime
//!
//! Executes one Wasm job on one node: a WASI program reads its inputs
//! (fetched by CID and mounted read-only), writes to `/outputs`, and its
//! whole result is stored as a CID. Not implemented yet: the crate exists so
//! that the workspace has its final shape.
//!
//! ## Layout
//! - `lib.rs`: this overview.
