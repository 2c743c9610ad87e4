// The `exact` prelude of kernels.wgsl (docs/wasi-nn.md, "Determinism
// across devices"). Every function is one fixed sequence of operations
// that Vulkan requires to be exact or correctly rounded: f32 add, subtract
// and multiply, comparisons, integer operations, conversions between f32
// and i32 of in-range values, and bit casts. `nn/exact/math.rs` is the same
// sequence on the CPU, line for line; keep the two in step.
//
// - Contraction: build.rs decorates every float result NoContraction.
// - Denormals: a device may flush them or not, so every result goes
//   through `z`, which makes any result of magnitude at most 2^-126 (the
//   smallest normal) +0. Whether the device flushed a tiny result (with
//   either sign, tininess detected before or after rounding) or kept it,
//   `z` gives +0; nothing tiny ever reaches another operation.
// - Signed zeros, infinities and NaNs: build.rs asks for
//   SignedZeroInfNanPreserve; NaN payloads are made canonical where a
//   value is stored (`f_out`), and NaN tests compare bits.

const F_MIN_BITS: u32 = 0x00800000u;
const INF_BITS: u32 = 0x7f800000u;
const CANONICAL_NAN: u32 = 0x7fc00000u;

fn z(x: f32) -> f32 { return select(x, 0.0, (bitcast<u32>(x) & 0x7fffffffu) <= F_MIN_BITS); }
fn is_nan(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > INF_BITS; }
fn nan() -> f32 { return bitcast<f32>(CANONICAL_NAN); }

fn f_add(a: f32, b: f32) -> f32 { return z(a + b); }
fn f_sub(a: f32, b: f32) -> f32 { return z(a - b); }
fn f_mul(a: f32, b: f32) -> f32 { return z(a * b); }

// The larger of a and b; NaN if either is NaN.
fn f_max(a: f32, b: f32) -> f32 {
    if (is_nan(a) || is_nan(b)) { return nan(); }
    return select(a, b, b > a);
}

fn f_relu(x: f32) -> f32 {
    if (is_nan(x)) { return nan(); }
    return select(0.0, x, x > 0.0);
}

fn f_out(x: f32) -> f32 { return select(x, nan(), is_nan(x)); }

// 2^k for k in [-126, 127], built from its bits.
fn pow2(k: i32) -> f32 { return bitcast<f32>(u32(k + 127) << 23u); }

// x * 2^k for k in [-252, 254], in two exact steps (only the last can round).
fn scale(x: f32, k: i32) -> f32 {
    let k1 = k / 2;
    return f_mul(f_mul(x, pow2(k1)), pow2(k - k1));
}

// a / b: b's significand m in [1, 2) gets a reciprocal by three Newton
// steps from a linear seed, the quotient one correction, and the exponent
// is applied exactly. Within 1 ULP of the correctly rounded quotient for
// normal results (nn/exact/math.rs tests it against IEEE division).
fn f_div(a: f32, b: f32) -> f32 {
    if (is_nan(a) || is_nan(b)) { return nan(); }
    let ua = bitcast<u32>(a) & 0x7fffffffu;
    let ub = bitcast<u32>(b) & 0x7fffffffu;
    let neg = ((bitcast<u32>(a) ^ bitcast<u32>(b)) & 0x80000000u) != 0u;
    let sign = select(1.0, -1.0, neg);
    if (ub == INF_BITS) {
        if (ua == INF_BITS) { return nan(); }
        return 0.0;
    }
    if (ub <= F_MIN_BITS) {
        if (ua <= F_MIN_BITS) { return nan(); }
        return sign * bitcast<f32>(INF_BITS);
    }
    if (ua == INF_BITS) { return sign * bitcast<f32>(INF_BITS); }
    if (ua <= F_MIN_BITS) { return 0.0; }
    let e = i32(ub >> 23u) - 127;
    let mb = bitcast<f32>((ub & 0x007fffffu) | 0x3f800000u);
    let ma = bitcast<f32>(ua);
    var r = f_sub(bitcast<f32>(0x3fba827au), f_mul(0.5, mb));
    r = f_mul(r, f_sub(2.0, f_mul(mb, r)));
    r = f_mul(r, f_sub(2.0, f_mul(mb, r)));
    r = f_mul(r, f_sub(2.0, f_mul(mb, r)));
    var q = f_mul(ma, r);
    q = f_add(q, f_mul(f_sub(ma, f_mul(q, mb)), r));
    return sign * scale(q, -e);
}

// e^x: k = round(x / ln 2), r = x - k ln 2 in two parts (Cody-Waite; k *
// LN2_HI is exact), a degree-7 Taylor polynomial on |r| <= 0.35, times 2^k.
fn f_exp(x: f32) -> f32 {
    if (is_nan(x)) { return nan(); }
    if (x > bitcast<f32>(0x42b17217u)) { return bitcast<f32>(INF_BITS); }
    if (x < bitcast<f32>(0xc2aeac4fu)) { return 0.0; }
    let t = f_mul(x, bitcast<f32>(0x3fb8aa3bu));
    let k = i32(f_add(t, select(0.5, -0.5, t < 0.0)));
    let kf = f32(k);
    var r = f_sub(x, f_mul(kf, bitcast<f32>(0x3f317200u)));
    r = f_sub(r, f_mul(kf, bitcast<f32>(0x35bfbe8eu)));
    var p = bitcast<f32>(0x39500d01u);
    p = f_add(bitcast<f32>(0x3ab60b61u), f_mul(r, p));
    p = f_add(bitcast<f32>(0x3c088888u), f_mul(r, p));
    p = f_add(bitcast<f32>(0x3d2aaaabu), f_mul(r, p));
    p = f_add(bitcast<f32>(0x3e2aaaabu), f_mul(r, p));
    p = f_add(0.5, f_mul(r, p));
    p = f_add(1.0, f_mul(r, p));
    p = f_add(1.0, f_mul(r, p));
    return scale(p, k);
}

fn f_sigmoid(x: f32) -> f32 { return f_div(1.0, f_add(1.0, f_exp(-x))); }

// tanh: an odd Taylor polynomial to x^17 below 0.5, 1 - 2 / (e^2|x| + 1)
// up to 9, and +-1 beyond (where tanh rounds to 1).
fn f_tanh(x: f32) -> f32 {
    if (is_nan(x)) { return nan(); }
    let ax = select(x, -x, x < 0.0);
    var y: f32;
    if (ax < 0.5) {
        let x2 = f_mul(ax, ax);
        var p = bitcast<f32>(0x3a1aac12u);
        p = f_add(bitcast<f32>(0xbabed1b2u), f_mul(x2, p));
        p = f_add(bitcast<f32>(0x3b6b69e8u), f_mul(x2, p));
        p = f_add(bitcast<f32>(0xbc11371bu), f_mul(x2, p));
        p = f_add(bitcast<f32>(0x3cb327a4u), f_mul(x2, p));
        p = f_add(bitcast<f32>(0xbd5d0dd1u), f_mul(x2, p));
        p = f_add(bitcast<f32>(0x3e088889u), f_mul(x2, p));
        p = f_add(bitcast<f32>(0xbeaaaaabu), f_mul(x2, p));
        y = f_add(ax, f_mul(ax, f_mul(x2, p)));
    } else if (ax < 9.0) {
        y = f_sub(1.0, f_div(2.0, f_add(f_exp(f_add(ax, ax)), 1.0)));
    } else {
        y = 1.0;
    }
    return select(y, -y, x < 0.0);
}
