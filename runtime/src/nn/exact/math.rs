//! The exact arithmetic on the CPU: the same fixed sequences of correctly
//! rounded operations as `vulkan/exact.wgsl`, line for line (keep the two
//! in step; the tests in `tests/nn_exact.rs` compare them bit for bit on
//! lavapipe). Rust never contracts `a * b + c` into a fused multiply-add
//! and keeps denormals, so each operation here is the IEEE one; `z` then
//! flushes results of magnitude at most 2^-126 to +0, as on the device.

const F_MIN_BITS: u32 = 0x0080_0000;
const INF_BITS: u32 = 0x7f80_0000;
const CANONICAL_NAN: u32 = 0x7fc0_0000;

/// Results of magnitude at most the smallest normal become +0.
#[inline(always)]
pub(crate) fn z(x: f32) -> f32 {
    if x.to_bits() & 0x7fff_ffff <= F_MIN_BITS {
        0.0
    } else {
        x
    }
}

#[inline(always)]
pub(crate) fn is_nan(x: f32) -> bool {
    x.to_bits() & 0x7fff_ffff > INF_BITS
}

#[inline(always)]
fn nan() -> f32 {
    f32::from_bits(CANONICAL_NAN)
}

/// The canonical form of a value in exact mode: tiny values and zeros are
/// +0 and every NaN is the one quiet NaN. Weights and inputs are made
/// canonical before use, outputs when stored.
#[inline(always)]
pub(crate) fn canonical(x: f32) -> f32 {
    out(z(x))
}

#[inline(always)]
pub(crate) fn add(a: f32, b: f32) -> f32 {
    z(a + b)
}

#[inline(always)]
pub(crate) fn sub(a: f32, b: f32) -> f32 {
    z(a - b)
}

#[inline(always)]
pub(crate) fn mul(a: f32, b: f32) -> f32 {
    z(a * b)
}

/// The larger of a and b; NaN if either is NaN.
#[inline(always)]
pub(crate) fn max(a: f32, b: f32) -> f32 {
    if is_nan(a) || is_nan(b) {
        return nan();
    }
    if b > a {
        b
    } else {
        a
    }
}

#[inline(always)]
pub(crate) fn relu(x: f32) -> f32 {
    if is_nan(x) {
        return nan();
    }
    if x > 0.0 {
        x
    } else {
        0.0
    }
}

/// NaNs made canonical, where a value is stored.
#[inline(always)]
pub(crate) fn out(x: f32) -> f32 {
    if is_nan(x) {
        nan()
    } else {
        x
    }
}

/// 2^k for k in [-126, 127], built from its bits.
#[inline(always)]
fn pow2(k: i32) -> f32 {
    f32::from_bits(((k + 127) as u32) << 23)
}

/// x * 2^k for k in [-252, 254], in two exact steps.
#[inline(always)]
fn scale(x: f32, k: i32) -> f32 {
    let k1 = k / 2;
    mul(mul(x, pow2(k1)), pow2(k - k1))
}

/// a / b as in exact.wgsl's `f_div`.
pub(crate) fn div(a: f32, b: f32) -> f32 {
    Divisor::new(b).divide(a)
}

/// What `div` computes from the divisor alone (its significand's
/// reciprocal by Newton steps), so that dividing many values by one
/// divisor (softmax) does it once: the same operations on the same values,
/// so the same bits as `div` each time.
pub(crate) struct Divisor {
    bits: u32,
    /// |b|'s bits.
    ub: u32,
    e: i32,
    mb: f32,
    r: f32,
}

impl Divisor {
    pub(crate) fn new(b: f32) -> Divisor {
        let ub = b.to_bits() & 0x7fff_ffff;
        let e = (ub >> 23) as i32 - 127;
        let mb = f32::from_bits((ub & 0x007f_ffff) | 0x3f80_0000);
        let mut r = sub(f32::from_bits(0x3fba_827a), mul(0.5, mb));
        r = mul(r, sub(2.0, mul(mb, r)));
        r = mul(r, sub(2.0, mul(mb, r)));
        r = mul(r, sub(2.0, mul(mb, r)));
        Divisor { bits: b.to_bits(), ub, e, mb, r }
    }

    pub(crate) fn divide(&self, a: f32) -> f32 {
        let ub = self.ub;
        if is_nan(a) || ub > INF_BITS {
            return nan();
        }
        let ua = a.to_bits() & 0x7fff_ffff;
        let neg = (a.to_bits() ^ self.bits) & 0x8000_0000 != 0;
        let sign = if neg { -1.0 } else { 1.0 };
        if ub == INF_BITS {
            if ua == INF_BITS {
                return nan();
            }
            return 0.0;
        }
        if ub <= F_MIN_BITS {
            if ua <= F_MIN_BITS {
                return nan();
            }
            return sign * f32::from_bits(INF_BITS);
        }
        if ua == INF_BITS {
            return sign * f32::from_bits(INF_BITS);
        }
        if ua <= F_MIN_BITS {
            return 0.0;
        }
        let (mb, r) = (self.mb, self.r);
        let ma = f32::from_bits(ua);
        let mut q = mul(ma, r);
        q = add(q, mul(sub(ma, mul(q, mb)), r));
        sign * scale(q, -self.e)
    }
}

/// e^x as in exact.wgsl's `f_exp`.
pub(crate) fn exp(x: f32) -> f32 {
    if is_nan(x) {
        return nan();
    }
    if x > f32::from_bits(0x42b1_7217) {
        return f32::from_bits(INF_BITS);
    }
    if x < f32::from_bits(0xc2ae_ac4f) {
        return 0.0;
    }
    let t = mul(x, f32::from_bits(0x3fb8_aa3b));
    let k = add(t, if t < 0.0 { -0.5 } else { 0.5 }) as i32;
    let kf = k as f32;
    let mut r = sub(x, mul(kf, f32::from_bits(0x3f31_7200)));
    r = sub(r, mul(kf, f32::from_bits(0x35bf_be8e)));
    let mut p = f32::from_bits(0x3950_0d01);
    p = add(f32::from_bits(0x3ab6_0b61), mul(r, p));
    p = add(f32::from_bits(0x3c08_8888), mul(r, p));
    p = add(f32::from_bits(0x3d2a_aaab), mul(r, p));
    p = add(f32::from_bits(0x3e2a_aaab), mul(r, p));
    p = add(0.5, mul(r, p));
    p = add(1.0, mul(r, p));
    p = add(1.0, mul(r, p));
    scale(p, k)
}

pub(crate) fn sigmoid(x: f32) -> f32 {
    div(1.0, add(1.0, exp(-x)))
}

/// tanh as in exact.wgsl's `f_tanh`.
pub(crate) fn tanh(x: f32) -> f32 {
    if is_nan(x) {
        return nan();
    }
    let ax = if x < 0.0 { -x } else { x };
    let y = if ax < 0.5 {
        let x2 = mul(ax, ax);
        let mut p = f32::from_bits(0x3a1a_ac12);
        p = add(f32::from_bits(0xbabe_d1b2), mul(x2, p));
        p = add(f32::from_bits(0x3b6b_69e8), mul(x2, p));
        p = add(f32::from_bits(0xbc11_371b), mul(x2, p));
        p = add(f32::from_bits(0x3cb3_27a4), mul(x2, p));
        p = add(f32::from_bits(0xbd5d_0dd1), mul(x2, p));
        p = add(f32::from_bits(0x3e08_8889), mul(x2, p));
        p = add(f32::from_bits(0xbeaa_aaab), mul(x2, p));
        add(ax, mul(ax, mul(x2, p)))
    } else if ax < 9.0 {
        sub(1.0, div(2.0, add(exp(add(ax, ax)), 1.0)))
    } else {
        1.0
    };
    if x < 0.0 {
        -y
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between two finite f32s.
    fn ulps(a: f32, b: f32) -> u32 {
        let key = |x: f32| {
            let b = x.to_bits() as i32;
            if b < 0 {
                i32::MIN - b
            } else {
                b
            }
        };
        key(a).abs_diff(key(b))
    }

    /// A deterministic spread of normal values over many binades.
    fn values(n: usize, lo: i32, hi: i32) -> Vec<f32> {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let e = lo + (s % (hi - lo) as u64) as i32;
                let m = ((s >> 20) & 0x7f_ffff) as u32;
                let sign = ((s >> 50) & 1) as u32;
                f32::from_bits((sign << 31) | (((e + 127) as u32) << 23) | m)
            })
            .collect()
    }

    #[test]
    fn division_is_within_one_ulp_of_ieee() {
        let a = values(20_000, -40, 40);
        let b = values(20_000, -40, 40);
        let worst = a.iter().zip(&b).map(|(x, y)| ulps(div(*x, *y), x / y)).max().unwrap();
        assert!(worst <= 1, "division is {worst} ULP from IEEE");
    }

    #[test]
    fn division_handles_every_special_case() {
        let inf = f32::INFINITY;
        assert!(is_nan(div(0.0, 0.0)) && is_nan(div(inf, -inf)) && is_nan(div(f32::NAN, 1.0)));
        assert_eq!(div(1.0, 0.0), inf);
        assert_eq!(div(-1.0, 0.0), -inf);
        assert_eq!(div(3.0, inf).to_bits(), 0);
        assert_eq!(div(-inf, 2.0), -inf);
        assert_eq!(div(6.0, -3.0), -2.0);
        // A tiny divisor is zero in exact mode; a tiny quotient is +0.
        assert_eq!(div(1.0, 1e-40), inf);
        assert_eq!(div(1e-30, 1e30).to_bits(), 0);
        assert_eq!(div(f32::MAX, 0.5), inf);
        assert_eq!(div(1.0, 3.0), 1.0 / 3.0);
    }

    #[test]
    fn exp_is_accurate_over_its_range() {
        let mut worst = 0;
        for i in 0..=20_000 {
            let x = -87.0 + 175.0 * i as f32 / 20_000.0;
            let want = (x as f64).exp() as f32;
            worst = worst.max(ulps(exp(x), want));
        }
        assert!(worst <= 2, "exp is {worst} ULP from the true value");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert_eq!(exp(-100.0).to_bits(), 0);
        assert!(is_nan(exp(f32::NAN)));
    }

    #[test]
    fn tanh_and_sigmoid_are_accurate() {
        let mut worst = 0f64;
        for i in 0..=20_000 {
            let x = -12.0 + 24.0 * i as f32 / 20_000.0;
            worst = worst.max((tanh(x) as f64 - (x as f64).tanh()).abs());
            worst = worst.max((sigmoid(x) as f64 - 1.0 / (1.0 + (-x as f64).exp())).abs());
        }
        assert!(worst < 2e-7, "largest absolute error {worst:e}");
        assert_eq!(tanh(20.0), 1.0);
        assert_eq!(tanh(-20.0), -1.0);
        assert!(is_nan(tanh(f32::NAN)) && is_nan(sigmoid(f32::NAN)));
    }

    #[test]
    fn tiny_results_flush_to_positive_zero_and_nans_are_canonical() {
        assert_eq!(mul(1e-20, 1e-20).to_bits(), 0);
        assert_eq!(mul(-1e-20, 1e-20).to_bits(), 0);
        assert_eq!(add(f32::MIN_POSITIVE * 1.5, -f32::MIN_POSITIVE).to_bits(), 0);
        // The smallest normal itself is flushed: a device that detects
        // tininess before rounding would have flushed it.
        assert_eq!(z(f32::MIN_POSITIVE).to_bits(), 0);
        assert_eq!(z(-0.0).to_bits(), 0);
        assert_eq!(canonical(f32::from_bits(0xffc0_1234)).to_bits(), CANONICAL_NAN);
        assert_eq!(relu(-3.0).to_bits(), 0);
        assert!(is_nan(max(1.0, f32::NAN)) && is_nan(max(f32::NAN, 1.0)));
    }
}
