// The GPU backend's kernels (docs/wasi-nn.md). Every tensor of a plan
// lives in one storage buffer, the arena `m`; a kernel finds its operands
// by offsets (in f32 elements) passed as push constants (WGSL `immediate`).
//
// Determinism: each output element is computed by one invocation with
// loops in a fixed order, and nothing is accumulated across invocations
// (no atomics), so one device gives bit-identical results run to run.
//
// Float arithmetic goes through the f_* functions of a prelude, prepended
// by build.rs: `fast.wgsl` (the device's own operations) or `exact.wgsl`
// (one fixed sequence of correctly rounded operations per function, the
// same as the CPU's in `nn/exact/math.rs`: bit-identical on any device).
//
// Invocations are laid out over a 2-D grid of 64-wide workgroups (x up to
// 65535 groups), flattened by `index()`.

struct Params { v: array<vec4<u32>, 8> }

var<immediate> pc: Params;
@group(0) @binding(0) var<storage, read_write> m: array<f32>;

fn p(i: u32) -> u32 { return pc.v[i >> 2u][i & 3u]; }
fn pf(i: u32) -> f32 { return bitcast<f32>(p(i)); }
fn index(gid: vec3<u32>, groups: vec3<u32>) -> u32 { return gid.x + gid.y * groups.x * 64u; }

const NONE: u32 = 0xffffffffu;

// C[b,i,j] = alpha * sum_k A[b,i,k] B[b,k,j] + beta * bias[i,j]
// 0 offA 1 offB 2 offC 3 offBias 4 M 5 N 6 K 7 batch 8 batch stride A
// 9 batch stride B 10 A row stride 11 A k stride 12 B k stride
// 13 B col stride 14 bias row stride 15 bias col stride 16 alpha 17 beta
//
// 64x64 output tiles, one 16x16 workgroup each (grid: N/64, M/64, batch);
// each invocation computes a 4x4 block (rows ly + 16r, columns lx + 16c).
// A and B are staged through workgroup memory 16 k-steps at a time. Each
// output is still one invocation's sum over k in ascending order: the same
// order as a naive loop, and the same bits run to run.
var<workgroup> tile_a: array<f32, 1024>; // [64 rows][16 k]
var<workgroup> tile_b: array<f32, 1024>; // [16 k][64 columns]

@compute @workgroup_size(16, 16)
fn matmul(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let mm = p(4u); let nn = p(5u); let kk = p(6u);
    let b = wid.z;
    let row0 = wid.y * 64u;
    let col0 = wid.x * 64u;
    let a_base = p(0u) + b * p(8u);
    let b_base = p(1u) + b * p(9u);
    let t = lid.y * 16u + lid.x;
    var acc: array<f32, 16>;
    for (var q = 0u; q < 16u; q++) { acc[q] = 0.0; }
    for (var k0 = 0u; k0 < kk; k0 += 16u) {
        for (var q = 0u; q < 4u; q++) {
            let e = t + 256u * q;
            let gi = row0 + (e >> 4u);
            let ga = k0 + (e & 15u);
            var av = 0.0;
            if (gi < mm && ga < kk) { av = m[a_base + gi * p(10u) + ga * p(11u)]; }
            tile_a[e] = av;
            let gb = k0 + (e >> 6u);
            let gj = col0 + (e & 63u);
            var bv = 0.0;
            if (gb < kk && gj < nn) { bv = m[b_base + gb * p(12u) + gj * p(13u)]; }
            tile_b[e] = bv;
        }
        workgroupBarrier();
        let steps = min(16u, kk - k0);
        for (var k = 0u; k < steps; k++) {
            var a: array<f32, 4>;
            var bb: array<f32, 4>;
            for (var r = 0u; r < 4u; r++) { a[r] = tile_a[(lid.y + 16u * r) * 16u + k]; }
            for (var c = 0u; c < 4u; c++) { bb[c] = tile_b[k * 64u + lid.x + 16u * c]; }
            for (var r = 0u; r < 4u; r++) {
                for (var c = 0u; c < 4u; c++) {
                    acc[r * 4u + c] = f_add(acc[r * 4u + c], f_mul(a[r], bb[c]));
                }
            }
        }
        workgroupBarrier();
    }
    for (var r = 0u; r < 4u; r++) {
        let i = row0 + lid.y + 16u * r;
        for (var c = 0u; c < 4u; c++) {
            let j = col0 + lid.x + 16u * c;
            if (i < mm && j < nn) {
                var y = f_mul(pf(16u), acc[r * 4u + c]);
                if (p(3u) != NONE) { y = f_add(y, f_mul(pf(17u), m[p(3u) + i * p(14u) + j * p(15u)])); }
                m[p(2u) + (b * mm + i) * nn + j] = f_out(y);
            }
        }
    }
}

// 0 op (0 add 1 mul 2 sub 3 div) 1 offA 2 offB 3 offC 4 n 5 rank
// 6..11 output dims 12..17 A strides 18..23 B strides (0 where broadcast)
@compute @workgroup_size(64)
fn binary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let idx = index(gid, groups);
    if (idx >= p(4u)) { return; }
    var rem = idx;
    var ia = p(1u);
    var ib = p(2u);
    for (var d = p(5u); d > 0u; d--) {
        let dim = p(5u + d);
        let c = rem % dim;
        rem = rem / dim;
        ia += c * p(11u + d);
        ib += c * p(17u + d);
    }
    let a = m[ia];
    let b = m[ib];
    var y: f32;
    switch p(0u) {
        case 0u: { y = f_add(a, b); }
        case 1u: { y = f_mul(a, b); }
        case 2u: { y = f_sub(a, b); }
        default: { y = f_div(a, b); }
    }
    m[p(3u) + idx] = f_out(y);
}

// 0 op (0 relu 1 sigmoid 2 tanh) 1 offIn 2 offOut 3 n
@compute @workgroup_size(64)
fn unary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let idx = index(gid, groups);
    if (idx >= p(3u)) { return; }
    let x = m[p(1u) + idx];
    var y: f32;
    switch p(0u) {
        case 0u: { y = f_relu(x); }
        case 1u: { y = f_sigmoid(x); }
        default: { y = f_tanh(x); }
    }
    m[p(2u) + idx] = f_out(y);
}

// A strided copy: element c (a multi-index over dims) goes from
// offIn + sum c*src_stride to offOut + sum c*dst_stride. Transpose, Concat.
// 0 offIn 1 offOut 2 n 3 rank 4..9 dims 10..15 src strides 16..21 dst strides
@compute @workgroup_size(64)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let idx = index(gid, groups);
    if (idx >= p(2u)) { return; }
    var rem = idx;
    var src = p(0u);
    var dst = p(1u);
    for (var d = p(3u); d > 0u; d--) {
        let dim = p(3u + d);
        let c = rem % dim;
        rem = rem / dim;
        src += c * p(9u + d);
        dst += c * p(15u + d);
    }
    m[dst] = m[src];
}

// 2-D convolution, NCHW, with groups, strides, pads and dilations. One
// invocation computes `cb` (1 or 4) consecutive output channels of one
// output pixel, so each input value is loaded once for all of them; each
// output is still summed over (c, kh, kw) in ascending order, bias last.
// 0 offX 1 offW 2 offBias 3 offY 4 N 5 C 6 H 7 W 8 M 9 OH 10 OW 11 KH
// 12 KW 13 sh 14 sw 15 pad top 16 pad left 17 dh 18 dw 19 group 20 cb
@compute @workgroup_size(64)
fn conv(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let idx = index(gid, groups);
    let oh_n = p(9u); let ow_n = p(10u); let mo_n = p(8u); let cb = p(20u);
    let blocks = mo_n / cb;
    if (idx >= p(4u) * blocks * oh_n * ow_n) { return; }
    let ow = idx % ow_n;
    let oh = (idx / ow_n) % oh_n;
    let mo0 = ((idx / (ow_n * oh_n)) % blocks) * cb;
    let n = idx / (ow_n * oh_n * blocks);
    let cc = p(5u); let h = p(6u); let w = p(7u); let kh_n = p(11u); let kw_n = p(12u);
    let cpg = cc / p(19u);
    let g = mo0 / (mo_n / p(19u));
    let kvol = kh_n * kw_n;
    let wstride = cpg * kvol;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var c = 0u; c < cpg; c++) {
        let ci = g * cpg + c;
        let xbase = p(0u) + (n * cc + ci) * h * w;
        let wbase = p(1u) + (mo0 * cpg + c) * kvol;
        for (var kh = 0u; kh < kh_n; kh++) {
            let ih = i32(oh * p(13u) + kh * p(17u)) - i32(p(15u));
            if (ih < 0 || ih >= i32(h)) { continue; }
            for (var kw = 0u; kw < kw_n; kw++) {
                let iw = i32(ow * p(14u) + kw * p(18u)) - i32(p(16u));
                if (iw < 0 || iw >= i32(w)) { continue; }
                let x = m[xbase + u32(ih) * w + u32(iw)];
                let wk = wbase + kh * kw_n + kw;
                for (var q = 0u; q < cb; q++) {
                    acc[q] = f_add(acc[q], f_mul(x, m[wk + q * wstride]));
                }
            }
        }
    }
    for (var q = 0u; q < cb; q++) {
        var y = acc[q];
        if (p(2u) != NONE) { y = f_add(y, m[p(2u) + mo0 + q]); }
        m[p(3u) + ((n * mo_n + mo0 + q) * oh_n + oh) * ow_n + ow] = f_out(y);
    }
}

// Max or average pooling, NCHW (GlobalAveragePool is a full-size window).
// 0 offX 1 offY 2 N*C 3 H 4 W 5 OH 6 OW 7 KH 8 KW 9 sh 10 sw 11 pad top
// 12 pad left 13 kind (0 max, 1 average) 14 count_include_pad
@compute @workgroup_size(64)
fn pool(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let idx = index(gid, groups);
    let oh_n = p(5u); let ow_n = p(6u);
    if (idx >= p(2u) * oh_n * ow_n) { return; }
    let ow = idx % ow_n;
    let oh = (idx / ow_n) % oh_n;
    let nc = idx / (ow_n * oh_n);
    let h = p(3u); let w = p(4u);
    let base = p(0u) + nc * h * w;
    let is_max = p(13u) == 0u;
    var acc = 0.0;
    if (is_max) { acc = bitcast<f32>(0xff800000u); }
    var count = 0u;
    for (var kh = 0u; kh < p(7u); kh++) {
        let ih = i32(oh * p(9u) + kh) - i32(p(11u));
        for (var kw = 0u; kw < p(8u); kw++) {
            let iw = i32(ow * p(10u) + kw) - i32(p(12u));
            if (ih < 0 || ih >= i32(h) || iw < 0 || iw >= i32(w)) {
                if (p(14u) != 0u) { count++; }
                continue;
            }
            let x = m[base + u32(ih) * w + u32(iw)];
            if (is_max) { acc = f_max(acc, x); } else { acc = f_add(acc, x); }
            count++;
        }
    }
    if (!is_max) { acc = f_div(acc, f32(max(count, 1u))); }
    m[p(1u) + idx] = f_out(acc);
}

// Softmax over `len` elements `inner` apart; one invocation per row.
// 0 offIn 1 offOut 2 outer 3 len 4 inner
@compute @workgroup_size(64)
fn softmax(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let idx = index(gid, groups);
    let len = p(3u); let inner = p(4u);
    if (idx >= p(2u) * inner) { return; }
    let o = idx / inner;
    let i = idx - o * inner;
    let base = o * len * inner + i;
    var mx = bitcast<f32>(0xff800000u);
    for (var k = 0u; k < len; k++) { mx = f_max(mx, m[p(0u) + base + k * inner]); }
    var sum = 0.0;
    for (var k = 0u; k < len; k++) { sum = f_add(sum, f_exp(f_sub(m[p(0u) + base + k * inner], mx))); }
    for (var k = 0u; k < len; k++) {
        m[p(1u) + base + k * inner] = f_out(f_div(f_exp(f_sub(m[p(0u) + base + k * inner], mx)), sum));
    }
}

// Inference BatchNormalization, folded on the host (graph.rs) into a
// per-channel scale and shift: y = x * scale + shift.
// 0 offX 1 offY 2 offScale 3 offShift 4 n 5 C 6 spatial
@compute @workgroup_size(64)
fn batchnorm(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let idx = index(gid, groups);
    if (idx >= p(4u)) { return; }
    let c = (idx / p(6u)) % p(5u);
    m[p(1u) + idx] = f_out(f_add(f_mul(m[p(0u) + idx], m[p(2u) + c]), m[p(3u) + c]));
}
