//! Signed receipts: what anyone can check about a completed job without
//! trusting the requester that ran it.
//!
//! Each compute node signs, with its node key (ed25519), two statements
//! about its execution: its commitment ([`commit_statement`]: job CID,
//! execution id, commitment, exit code) when it reports it, and its reveal
//! ([`reveal_statement`]: job CID, execution id, result CID, nonce) when
//! it answers the requester. When the job completes, the requester gathers
//! them into a [`Receipt`] (the spec itself, the result, every execution
//! with its node's public key and signatures, the agreement rule, times),
//! signs it with its own key and stores it as one raw block: the receipt's
//! CID names it, and its bytes are all [`verify`] needs.
//!
//! [`verify`] proves that the receipt is the requester's (signature), that
//! its spec is the job CID's, that each execution's statements were signed
//! by the key of the node named, that each reveal opens its commitment,
//! and that at least `quorum` distinct node keys revealed the result. It
//! cannot prove that those keys belong to distinct people (a Sybil group
//! can hold many), nor that a node computed rather than copied (commit-
//! reveal stops copying another node's answer, not collusion): see
//! `docs/receipts.md`.

use std::collections::BTreeSet;

use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use shoal_storage::Cid;

use crate::commit;
use crate::spec::Spec;

/// The receipt format this code writes and reads.
pub const VERSION: u32 = 1;

/// Largest receipt [`verify`] reads (a spec is at most 1 MiB, plus the
/// executions').
pub const MAX_RECEIPT: usize = 4 << 20;

/// A job's identity by content: the CID (v1, raw, sha256) of its spec's
/// canonical JSON, [`Spec::canonical_json`].
pub fn job_cid(spec: &Spec) -> Cid {
    raw_cid(&spec.canonical_json())
}

/// The CID of `bytes` stored as one raw block.
pub fn raw_cid(bytes: &[u8]) -> Cid {
    *shoal_storage::Block::new(shoal_storage::CidVersion::V1, shoal_storage::block::RAW, bytes.to_vec()).cid()
}

/// What a compute node signs when it reports its commitment.
pub fn commit_statement(job: &Cid, exec: &str, commitment: &[u8; 32], exit_code: i32) -> Vec<u8> {
    format!("shoal-commit/1\n{job}\n{exec}\n{}\n{exit_code}", hex::encode(commitment)).into_bytes()
}

/// What a compute node signs when it reveals its result.
pub fn reveal_statement(job: &Cid, exec: &str, result: &Cid, nonce: &[u8; 32]) -> Vec<u8> {
    format!("shoal-reveal/1\n{job}\n{exec}\n{result}\n{}", hex::encode(nonce)).into_bytes()
}

/// What a submitter signs when it submits a job (its CID) at `at_ms`:
/// the time bounds how long a captured signature can be replayed.
pub fn submit_statement(job: &Cid, at_ms: u64) -> Vec<u8> {
    format!("shoal-submit/1\n{job}\n{at_ms}").into_bytes()
}

/// The public key a peer id holds inline (ed25519 ids do: their
/// multihash is the identity of the encoded key).
pub fn peer_key(peer: &PeerId) -> Option<PublicKey> {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    (mh.code() == 0).then(|| PublicKey::try_decode_protobuf(mh.digest()).ok()).flatten()
}

/// Whether `signature` (hex) is `peer`'s signature of `statement`.
pub fn signed_by(peer: &PeerId, statement: &[u8], signature: &str) -> bool {
    match (peer_key(peer), hex::decode(signature)) {
        (Some(key), Ok(sig)) => key.verify(statement, &sig),
        _ => false,
    }
}

/// One execution as the receipt records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attestation {
    /// The execution id.
    pub exec: String,
    /// The node's peer id.
    pub node: String,
    /// The node's public key (libp2p protobuf encoding, hex).
    pub public_key: String,
    /// The commitment (hex) and the exit code it was reported with.
    pub commitment: String,
    pub exit_code: i32,
    /// The node's signature of [`commit_statement`] (hex).
    pub commit_signature: String,
    /// The revealed result, nonce (hex) and the signature of
    /// [`reveal_statement`] (hex), when it revealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reveal_signature: Option<String>,
    /// How the requester judged it: `agreed` or `dissented` (against the
    /// result), or `failed` in the receipt of a failed job.
    pub verdict: String,
}

/// A completed job's receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub version: u32,
    /// The requester's job id.
    pub job: String,
    /// [`job_cid`] of `spec`.
    pub job_cid: String,
    /// The spec, whole (so the receipt alone proves what was run).
    pub spec: Spec,
    /// The agreed result; absent from the receipt of a failed job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Why the job failed (no consensus, out of retries, timed out);
    /// present exactly when `result` is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Who submitted the job, with the signature that shows it (absent:
    /// an anonymous submission).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitter: Option<crate::model::Submitter>,
    /// Results needed to agree (`spec.quorum()`) and executions asked
    /// (`redundancy.count`), as applied.
    pub quorum: u32,
    pub count: u32,
    pub executions: Vec<Attestation>,
    /// The requester's peer id and public key (protobuf, hex).
    pub requester: String,
    pub requester_key: String,
    pub created_ms: u64,
    pub completed_ms: u64,
    /// The requester's signature over [`Signed::signed_bytes`] (hex).
    #[serde(default)]
    pub signature: String,
}

/// A document a requester signs (a job's receipt, a pipeline's): its
/// identity fields and signature, and the signing both kinds share.
pub trait Signed: Serialize + Clone {
    /// The requester's peer id, its public key (protobuf, hex) and its
    /// signature (hex).
    fn requester_fields(&mut self) -> [&mut String; 3];

    /// The bytes the requester signs: the JSON with an empty signature.
    fn signed_bytes(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        let [_, _, signature] = unsigned.requester_fields();
        signature.clear();
        // Strings, numbers and a spec: serialising cannot fail.
        serde_json::to_vec(&unsigned).unwrap_or_default()
    }

    /// Signs it with the requester's key (setting its identity) and
    /// returns it with the block to store.
    fn sign(mut self, key: &Keypair) -> Result<(Self, Vec<u8>), Error> {
        let [peer, public, _] = self.requester_fields();
        *peer = key.public().to_peer_id().to_string();
        *public = hex::encode(key.public().encode_protobuf());
        let sig = key.sign(&self.signed_bytes()).map_err(|e| Error::Sign(e.to_string()))?;
        *self.requester_fields()[2] = hex::encode(sig);
        let bytes = serde_json::to_vec(&self).map_err(|e| Error::Sign(e.to_string()))?;
        Ok((self, bytes))
    }
}

impl Signed for Receipt {
    fn requester_fields(&mut self) -> [&mut String; 3] {
        [&mut self.requester, &mut self.requester_key, &mut self.signature]
    }
}

/// Why a receipt does not verify: the first failure found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("the receipt's bytes hash to {found}, not to {expected}: it is not the receipt named")]
    WrongCid { expected: String, found: String },
    #[error("not a receipt: {0}")]
    Malformed(String),
    #[error("receipt version {0} is not supported (this shoal reads version {VERSION}); upgrade shoal")]
    Version(u32),
    #[error("the receipt's job cid {claimed} is not its spec's ({actual}): the spec was changed")]
    JobCid { claimed: String, actual: String },
    #[error("{who}: the public key does not belong to peer {peer}")]
    KeyMismatch { who: String, peer: String },
    #[error("{who}: bad signature: {why}")]
    Signature { who: String, why: String },
    #[error("execution {exec} on {node}: the revealed result {result} does not open its commitment")]
    RevealMismatch { exec: String, node: String, result: String },
    #[error("execution {exec}: node {node} appears twice")]
    Duplicate { exec: String, node: String },
    #[error("only {found} distinct node key(s){trusted} revealed the result {result}; the quorum is {quorum}")]
    Quorum { result: String, found: usize, quorum: u32, trusted: &'static str },
    #[error("cannot sign the receipt: {0}")]
    Sign(String),
}

/// What a verified receipt proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub job_cid: Cid,
    /// The agreed result; `None` for a failed job (see `failure`).
    pub result: Option<Cid>,
    /// Why the job failed, as its requester signed it.
    pub failure: Option<String>,
    /// The submitter whose signature of the job CID the receipt carries.
    pub submitter: Option<String>,
    /// When the submitter signed a pipeline rather than this job: that
    /// pipeline's CID (the job is one of its steps, as its pipeline
    /// receipt proves).
    pub submitter_pipeline: Option<Cid>,
    /// The distinct node keys (peer ids) that revealed the result.
    pub attested_by: Vec<String>,
    pub quorum: u32,
}

pub(crate) fn key_of(who: &str, peer: &str, hex_key: &str) -> Result<PublicKey, Error> {
    let bytes = hex::decode(hex_key).map_err(|e| Error::Malformed(format!("{who}: public key: {e}")))?;
    let key =
        PublicKey::try_decode_protobuf(&bytes).map_err(|e| Error::Malformed(format!("{who}: public key: {e}")))?;
    let id: PeerId = peer.parse().map_err(|e| Error::Malformed(format!("{who}: peer id {peer}: {e}")))?;
    if key.to_peer_id() != id {
        return Err(Error::KeyMismatch { who: who.to_owned(), peer: peer.to_owned() });
    }
    Ok(key)
}

pub(crate) fn check(who: &str, key: &PublicKey, msg: &[u8], hex_sig: &str) -> Result<(), Error> {
    let sig =
        hex::decode(hex_sig).map_err(|e| Error::Signature { who: who.to_owned(), why: format!("not hex: {e}") })?;
    if key.verify(msg, &sig) {
        Ok(())
    } else {
        Err(Error::Signature { who: who.to_owned(), why: "it does not match the signed statement".into() })
    }
}

fn hex32(what: &str, s: &str) -> Result<[u8; 32], Error> {
    hex::decode(s)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Error::Malformed(format!("{what}: not 32 bytes of hex")))
}

fn parse_cid(what: &str, s: &str) -> Result<Cid, Error> {
    s.parse().map_err(|e| Error::Malformed(format!("{what}: {s} is not a cid: {e}")))
}

/// Checks that receipt `bytes` are the raw block `cid` names (when given)
/// and within [`MAX_RECEIPT`].
pub(crate) fn check_block(bytes: &[u8], cid: Option<&Cid>) -> Result<(), Error> {
    if let Some(expected) = cid {
        // Hashed the same way as the block was stored.
        let found = raw_cid(bytes);
        if expected.codec() != shoal_storage::block::RAW || found != *expected {
            return Err(Error::WrongCid { expected: expected.to_string(), found: found.to_string() });
        }
    }
    if bytes.len() > MAX_RECEIPT {
        return Err(Error::Malformed(format!("{} bytes, more than {MAX_RECEIPT}", bytes.len())));
    }
    Ok(())
}

/// Checks a receipt from its bytes alone (see the module documentation).
/// `cid`, when given, must be the bytes' CID; `trusted`, when given, is
/// the set of peer ids whose attestations count toward the quorum.
pub fn verify(bytes: &[u8], cid: Option<&Cid>, trusted: Option<&BTreeSet<String>>) -> Result<Verified, Error> {
    check_block(bytes, cid)?;
    let r: Receipt = serde_json::from_slice(bytes).map_err(|e| Error::Malformed(e.to_string()))?;
    if r.version != VERSION {
        return Err(Error::Version(r.version));
    }
    let requester = key_of("the requester", &r.requester, &r.requester_key)?;
    check("the requester's signature of the receipt", &requester, &r.signed_bytes(), &r.signature)?;
    let actual = job_cid(&r.spec);
    if actual.to_string() != r.job_cid {
        return Err(Error::JobCid { claimed: r.job_cid.clone(), actual: actual.to_string() });
    }
    if r.quorum != r.spec.quorum() {
        return Err(Error::Malformed(format!("quorum {} is not the spec's ({})", r.quorum, r.spec.quorum())));
    }
    let result = match (&r.result, &r.failure) {
        (Some(res), None) => Some(parse_cid("result", res)?),
        (None, Some(_)) => None,
        _ => return Err(Error::Malformed("a receipt has either a result or a failure, not both or neither".into())),
    };
    // A pipeline step's claim signs its pipeline's CID (the step's spec
    // did not exist when its submitter signed): that the job is one of
    // the pipeline's steps is the pipeline receipt's to prove.
    let mut submitter_pipeline = None;
    if let Some(s) = &r.submitter {
        let signed = match &s.pipeline {
            None => actual,
            Some(p) => {
                let p = parse_cid("submitter.pipeline", p)?;
                submitter_pipeline = Some(p);
                p
            }
        };
        if !s.signs(&signed) {
            return Err(Error::Signature {
                who: format!("the submitter {}", s.key),
                why: format!("it does not sign {signed} at {}", s.at_ms),
            });
        }
    }
    let mut nodes = BTreeSet::new();
    let mut attested = BTreeSet::new();
    for a in &r.executions {
        let who = format!("execution {} on {}", a.exec, a.node);
        if !nodes.insert(a.node.clone()) {
            return Err(Error::Duplicate { exec: a.exec.clone(), node: a.node.clone() });
        }
        let key = key_of(&who, &a.node, &a.public_key)?;
        let commitment = hex32(&format!("{who}: commitment"), &a.commitment)?;
        check(
            &format!("{who}: commitment signature"),
            &key,
            &commit_statement(&actual, &a.exec, &commitment, a.exit_code),
            &a.commit_signature,
        )?;
        let (Some(res), Some(nonce), Some(sig)) = (&a.result, &a.nonce, &a.reveal_signature) else { continue };
        let res_cid = parse_cid(&format!("{who}: result"), res)?;
        let nonce = hex32(&format!("{who}: nonce"), nonce)?;
        check(&format!("{who}: reveal signature"), &key, &reveal_statement(&actual, &a.exec, &res_cid, &nonce), sig)?;
        if !commit::verify(&commitment, &res_cid, &nonce) {
            return Err(Error::RevealMismatch { exec: a.exec.clone(), node: a.node.clone(), result: res.clone() });
        }
        if Some(res_cid) == result && trusted.is_none_or(|t| t.contains(&a.node)) {
            attested.insert(a.node.clone());
        }
    }
    // A failure is the requester's word (signed), with every execution's
    // own signed statements beside it: there is no result to reach a
    // quorum on.
    if let Some(result) = result {
        if (attested.len() as u32) < r.quorum {
            return Err(Error::Quorum {
                result: result.to_string(),
                found: attested.len(),
                quorum: r.quorum,
                trusted: if trusted.is_some() { " among the trusted keys" } else { "" },
            });
        }
    }
    Ok(Verified {
        job_cid: actual,
        result,
        failure: r.failure.clone(),
        submitter: r.submitter.as_ref().map(|s| s.key.clone()),
        submitter_pipeline,
        attested_by: attested.into_iter().collect(),
        quorum: r.quorum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cid(n: u8) -> Cid {
        raw_cid(&[n])
    }

    /// A receipt of a redundancy-3 job: `honest` nodes revealed `result`,
    /// one liar revealed another.
    fn receipt(honest: usize) -> (Receipt, Vec<Keypair>, Keypair) {
        let mut spec = Spec::new(cid(0));
        spec.redundancy.count = 3;
        let job = job_cid(&spec);
        let result = cid(1);
        let keys: Vec<Keypair> = (0..honest + 1).map(|_| Keypair::generate_ed25519()).collect();
        let executions = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let exec = format!("e-{i}");
                let res = if i < honest { result } else { cid(9) };
                let nonce = [i as u8; 32];
                let c = commit::commitment(&res, &nonce);
                Attestation {
                    exec: exec.clone(),
                    node: k.public().to_peer_id().to_string(),
                    public_key: hex::encode(k.public().encode_protobuf()),
                    commitment: hex::encode(c),
                    exit_code: 0,
                    commit_signature: hex::encode(k.sign(&commit_statement(&job, &exec, &c, 0)).unwrap()),
                    result: Some(res.to_string()),
                    nonce: Some(hex::encode(nonce)),
                    reveal_signature: Some(hex::encode(k.sign(&reveal_statement(&job, &exec, &res, &nonce)).unwrap())),
                    verdict: if i < honest { "agreed" } else { "dissented" }.into(),
                }
            })
            .collect();
        let r = Receipt {
            version: VERSION,
            job: "j-1".into(),
            job_cid: job.to_string(),
            quorum: spec.quorum(),
            count: spec.redundancy.count,
            spec,
            result: Some(result.to_string()),
            failure: None,
            submitter: None,
            executions,
            requester: String::new(),
            requester_key: String::new(),
            created_ms: 1,
            completed_ms: 2,
            signature: String::new(),
        };
        (r, keys, Keypair::generate_ed25519())
    }

    fn signed(r: Receipt, requester: &Keypair) -> Vec<u8> {
        r.sign(requester).unwrap().1
    }

    #[test]
    fn a_receipt_with_a_liar_outvoted_verifies() {
        let (r, keys, req) = receipt(2);
        let bytes = signed(r, &req);
        let v = verify(&bytes, Some(&raw_cid(&bytes)), None).unwrap();
        assert_eq!(v.attested_by.len(), 2);
        assert_eq!(v.quorum, 2);
        assert!(!v.attested_by.contains(&keys[2].public().to_peer_id().to_string()), "the liar attests nothing");
    }

    #[test]
    fn every_tampering_is_named() {
        let (r, keys, req) = receipt(2);
        // A flipped byte anywhere: the cid no longer matches.
        let mut bytes = signed(r.clone(), &req);
        let cid = raw_cid(&bytes);
        let last = bytes.len() - 3;
        bytes[last] ^= 1;
        assert!(matches!(verify(&bytes, Some(&cid), None), Err(Error::WrongCid { .. })));

        // A flipped byte in a node's signature, re-signed by the requester.
        let mut t = r.clone();
        let mut sig = hex::decode(t.executions[0].reveal_signature.clone().unwrap()).unwrap();
        sig[0] ^= 1;
        t.executions[0].reveal_signature = Some(hex::encode(sig));
        let e = verify(&signed(t, &req), None, None).unwrap_err();
        assert!(matches!(e, Error::Signature { .. }) && e.to_string().contains("e-0"), "{e}");

        // The requester's own signature.
        let (mut t, _) = r.clone().sign(&req).unwrap();
        t.completed_ms += 1;
        let e = verify(&serde_json::to_vec(&t).unwrap(), None, None).unwrap_err();
        assert!(e.to_string().contains("the requester's signature"), "{e}");

        // A reveal that does not open its commitment (signed by its node).
        let mut t = r.clone();
        let k = &keys[1];
        let job: Cid = t.job_cid.parse().unwrap();
        let other = [77u8; 32];
        let res: Cid = t.result.clone().unwrap().parse().unwrap();
        t.executions[1].nonce = Some(hex::encode(other));
        t.executions[1].reveal_signature =
            Some(hex::encode(k.sign(&reveal_statement(&job, "e-1", &res, &other)).unwrap()));
        let e = verify(&signed(t, &req), None, None).unwrap_err();
        assert!(matches!(e, Error::RevealMismatch { .. }), "{e}");

        // A quorum short by one key.
        let (short, _, _) = receipt(1);
        let e = verify(&signed(short, &req), None, None).unwrap_err();
        assert!(matches!(e, Error::Quorum { found: 1, quorum: 2, .. }), "{e}");

        // A spec that is not the job cid's.
        let mut t = r.clone();
        t.spec.retries += 1;
        let e = verify(&signed(t, &req), None, None).unwrap_err();
        assert!(matches!(e, Error::JobCid { .. }), "{e}");

        // A node's key swapped for another's.
        let mut t = r.clone();
        t.executions[0].public_key = t.executions[1].public_key.clone();
        let e = verify(&signed(t, &req), None, None).unwrap_err();
        assert!(matches!(e, Error::KeyMismatch { .. }), "{e}");

        // Keys outside the trusted set do not count.
        let bytes = signed(r, &req);
        let one: BTreeSet<String> = [keys[0].public().to_peer_id().to_string()].into_iter().collect();
        let e = verify(&bytes, None, Some(&one)).unwrap_err();
        assert!(e.to_string().contains("among the trusted keys"), "{e}");
        let both: BTreeSet<String> = keys[..2].iter().map(|k| k.public().to_peer_id().to_string()).collect();
        assert!(verify(&bytes, None, Some(&both)).is_ok());
    }

    #[test]
    fn a_failed_jobs_receipt_verifies_and_names_its_failure() {
        let (mut r, _, req) = receipt(1);
        r.result = None;
        r.failure = Some("no consensus: 2 results".into());
        let bytes = signed(r.clone(), &req);
        let v = verify(&bytes, None, None).unwrap();
        assert_eq!((v.result, v.failure.as_deref()), (None, Some("no consensus: 2 results")));
        // Both, or neither: malformed.
        let mut t = r.clone();
        t.failure = None;
        assert!(matches!(verify(&signed(t, &req), None, None), Err(Error::Malformed(_))));
        // The executions' signatures are still checked.
        let mut t = r;
        t.executions[0].commit_signature = t.executions[1].commit_signature.clone();
        assert!(matches!(verify(&signed(t, &req), None, None), Err(Error::Signature { .. })));
    }

    #[test]
    fn a_submitters_signature_must_sign_the_job() {
        let (mut r, _, req) = receipt(2);
        let alice = Keypair::generate_ed25519();
        let job: Cid = r.job_cid.parse().unwrap();
        let at = 1_700_000_000_000;
        let sig = hex::encode(alice.sign(&submit_statement(&job, at)).unwrap());
        let key = alice.public().to_peer_id().to_string();
        r.submitter = Some(crate::model::Submitter { key: key.clone(), at_ms: at, signature: sig, pipeline: None });
        let v = verify(&signed(r.clone(), &req), None, None).unwrap();
        assert_eq!(v.submitter.as_deref(), Some(key.as_str()));
        // Another time than the one signed.
        let mut t = r;
        t.submitter.as_mut().unwrap().at_ms += 1;
        let e = verify(&signed(t, &req), None, None).unwrap_err();
        assert!(e.to_string().contains("the submitter"), "{e}");
    }

    #[test]
    fn a_spec_survives_its_own_canonical_json() {
        let (r, _, _) = receipt(2);
        let text = String::from_utf8(r.spec.canonical_json()).unwrap();
        let back = Spec::from_yaml_or_json(&text).unwrap();
        assert_eq!(back.canonical_json(), r.spec.canonical_json());
        assert_eq!(job_cid(&back), job_cid(&r.spec));
    }
}
