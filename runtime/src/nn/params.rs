// The kernels' parameters (push constants), declared once. This file is
// part of the crate (`nn::params`) and is also included by build.rs, which
// turns the same declarations into the WGSL accessors the kernels call
// (`matmul_off_a()`, `binary_dims(i)`, ...) and their offsets
// (`BINARY_DIMS_AT`), prepended to kernels.wgsl. A field renamed or
// removed on one side fails the build; the order cannot differ.
//
// Offsets are in f32 elements of the arena; NONE marks an absent operand.

/// A parameter field: how many 32-bit words it takes and how WGSL sees it.
pub(crate) trait Field: Sized {
    const WORDS: usize;
    /// `u32`, `f32`, or `array` (u32 words read by index).
    const WGSL: &'static str;
    fn write(&self, w: &mut [u32]);
    fn read(w: &[u32]) -> Self;
}

impl Field for u32 {
    const WORDS: usize = 1;
    const WGSL: &'static str = "u32";
    fn write(&self, w: &mut [u32]) {
        w[0] = *self;
    }
    fn read(w: &[u32]) -> Self {
        w[0]
    }
}

impl Field for f32 {
    const WORDS: usize = 1;
    const WGSL: &'static str = "f32";
    fn write(&self, w: &mut [u32]) {
        w[0] = self.to_bits();
    }
    fn read(w: &[u32]) -> Self {
        f32::from_bits(w[0])
    }
}

impl<const N: usize> Field for [u32; N] {
    const WORDS: usize = N;
    const WGSL: &'static str = "array";
    fn write(&self, w: &mut [u32]) {
        w[..N].copy_from_slice(self);
    }
    fn read(w: &[u32]) -> Self {
        let mut v = [0u32; N];
        v.copy_from_slice(&w[..N]);
        v
    }
}

/// An absent operand's offset.
pub(crate) const NONE: u32 = u32::MAX;

/// Push-constant words every kernel gets (8 x vec4<u32> in WGSL).
pub(crate) const WORDS: usize = 32;

/// A kernel's parameters.
pub(crate) trait KernelParams {
    /// The kernel's entry point in kernels.wgsl.
    const ENTRY: &'static str;
    fn words(&self) -> [u32; WORDS];
    fn from_words(w: &[u32; WORDS]) -> Self;
}

macro_rules! kernel_params {
    ($( $(#[$meta:meta])* $name:ident = $entry:literal { $( $(#[$fmeta:meta])* $field:ident : $ty:ty ),* $(,)? } )*) => {
        $(
            $(#[$meta])*
            #[repr(C)]
            #[derive(Debug, Clone, Copy, Default, PartialEq)]
            pub(crate) struct $name { $( $(#[$fmeta])* pub(crate) $field: $ty, )* }

            impl KernelParams for $name {
                const ENTRY: &'static str = $entry;
                fn words(&self) -> [u32; WORDS] {
                    let mut w = [0u32; WORDS];
                    let mut at = 0;
                    $( Field::write(&self.$field, &mut w[at..]); at += <$ty as Field>::WORDS; )*
                    let _ = at;
                    w
                }
                fn from_words(w: &[u32; WORDS]) -> Self {
                    let mut at = 0;
                    $( let $field = <$ty as Field>::read(&w[at..]); at += <$ty as Field>::WORDS; )*
                    let _ = at;
                    $name { $( $field ),* }
                }
            }
        )*

        /// Every kernel's entry point and fields (name, words, WGSL type),
        /// in order: what build.rs turns into WGSL.
        #[allow(dead_code)]
        pub(crate) const LAYOUTS: &[(&str, &[(&str, usize, &str)])] = &[
            $( ($entry, &[ $( (stringify!($field), <$ty as Field>::WORDS, <$ty as Field>::WGSL) ),* ]) ),*
        ];
    };
}

/// Most dimensions the strided kernels (broadcasting, copies) handle.
pub(crate) const MAX_RANK: usize = 6;

kernel_params! {
    /// C[b,i,j] = alpha * sum_k A[b,i,k] B[b,k,j] + beta * bias[i,j].
    MatMul = "matmul" {
        off_a: u32, off_b: u32, off_c: u32,
        /// NONE without a bias.
        off_bias: u32,
        m: u32, n: u32, k: u32, batch: u32,
        batch_stride_a: u32, batch_stride_b: u32,
        a_row_stride: u32, a_k_stride: u32, b_k_stride: u32, b_col_stride: u32,
        bias_row_stride: u32, bias_col_stride: u32,
        alpha: f32, beta: f32,
    }
    /// Elementwise with numpy broadcasting: strides are 0 where broadcast.
    Binary = "binary" {
        /// 0 add, 1 mul, 2 sub, 3 div.
        op: u32,
        off_a: u32, off_b: u32, off_c: u32, n: u32, rank: u32,
        dims: [u32; MAX_RANK], stride_a: [u32; MAX_RANK], stride_b: [u32; MAX_RANK],
    }
    Unary = "unary" {
        /// 0 relu, 1 sigmoid, 2 tanh.
        op: u32,
        off_in: u32, off_out: u32, n: u32,
    }
    /// A strided copy: element c (a multi-index over dims) goes from
    /// off_in + sum c*src to off_out + sum c*dst. Transpose, Concat.
    StridedCopy = "copy" {
        off_in: u32, off_out: u32, n: u32, rank: u32,
        dims: [u32; MAX_RANK], src: [u32; MAX_RANK], dst: [u32; MAX_RANK],
    }
    /// 2-D convolution, NCHW, with groups, strides, pads and dilations.
    Conv = "conv" {
        off_x: u32, off_w: u32,
        /// NONE without a bias.
        off_bias: u32,
        off_y: u32,
        n: u32, c: u32, h: u32, w: u32, m: u32, oh: u32, ow: u32, kh: u32, kw: u32,
        stride_h: u32, stride_w: u32, pad_top: u32, pad_left: u32, dilation_h: u32, dilation_w: u32,
        group: u32,
        /// Output channels per invocation (1 or 4).
        cb: u32,
    }
    /// Max or average pooling, NCHW (GlobalAveragePool is a full window).
    Pool = "pool" {
        off_x: u32, off_y: u32, nc: u32, h: u32, w: u32, oh: u32, ow: u32, kh: u32, kw: u32,
        stride_h: u32, stride_w: u32, pad_top: u32, pad_left: u32,
        /// 0 max, 1 average.
        kind: u32,
        count_include_pad: u32,
    }
    /// Softmax over `len` elements `inner` apart; one invocation per row.
    Softmax = "softmax" {
        off_in: u32, off_out: u32, outer: u32, len: u32, inner: u32,
    }
    /// Inference BatchNormalization folded on the host: y = x * scale + shift.
    BatchNorm = "batchnorm" {
        off_x: u32, off_y: u32, off_scale: u32, off_shift: u32, n: u32, c: u32, spatial: u32,
    }
}
