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
// Parameters are read through accessors build.rs generates from
// `nn/params.rs` (`matmul_off_a()`, `binary_dims(i)`, ...), the same
// declarations the planner fills: a field missing on one side fails the
// build.
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

// The offsets of element `idx` (a multi-index over `rank` dims, last
// fastest) under two sets of strides; dims and strides are parameter
// arrays at the given word offsets. The binary and copy kernels' walk.
fn strided2(idx: u32, rank: u32, dims_at: u32, s1_at: u32, s2_at: u32) -> vec2<u32> {
    var rem = idx;
    var o = vec2<u32>(0u, 0u);
    for (var d = rank; d > 0u; d--) {
        let dim = p(dims_at + d - 1u);
        let c = rem % dim;
        rem = rem / dim;
        o += c * vec2<u32>(p(s1_at + d - 1u), p(s2_at + d - 1u));
    }
    return o;
}

// C[b,i,j] = alpha * sum_k A[b,i,k] B[b,k,j] + beta * bias[i,j] (params::MatMul)
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
    let mm = matmul_m(); let nn = matmul_n(); let kk = matmul_k();
    let b = wid.z;
    let row0 = wid.y * 64u;
    let col0 = wid.x * 64u;
    let a_base = matmul_off_a() + b * matmul_batch_stride_a();
    let b_base = matmul_off_b() + b * matmul_batch_stride_b();
    let t = lid.y * 16u + lid.x;
    var acc: array<f32, 16>;
    for (var q = 0u; q < 16u; q++) { acc[q] = 0.0; }
    for (var k0 = 0u; k0 < kk; k0 += 16u) {
        for (var q = 0u; q < 4u; q++) {
            let e = t + 256u * q;
            let gi = row0 + (e >> 4u);
            let ga = k0 + (e & 15u);
            var av = 0.0;
            if (gi < mm && ga < kk) { av = m[a_base + gi * matmul_a_row_stride() + ga * matmul_a_k_stride()]; }
            tile_a[e] = av;
            let gb = k0 + (e >> 6u);
            let gj = col0 + (e & 63u);
            var bv = 0.0;
            if (gb < kk && gj < nn) { bv = m[b_base + gb * matmul_b_k_stride() + gj * matmul_b_col_stride()]; }
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
                var y = f_mul(matmul_alpha(), acc[r * 4u + c]);
                if (matmul_off_bias() != NONE) {
                    let bias = m[matmul_off_bias() + i * matmul_bias_row_stride() + j * matmul_bias_col_stride()];
                    y = f_add(y, f_mul(matmul_beta(), bias));
                }
                m[matmul_off_c() + (b * mm + i) * nn + j] = f_out(y);
            }
        }
    }
}

// Elementwise with broadcasting (params::Binary).
@compute @workgroup_size(64)
fn binary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let idx = index(gid, groups);
    if (idx >= binary_n()) { return; }
    let o = strided2(idx, binary_rank(), BINARY_DIMS_AT, BINARY_STRIDE_A_AT, BINARY_STRIDE_B_AT);
    let a = m[binary_off_a() + o.x];
    let b = m[binary_off_b() + o.y];
    var y: f32;
    switch binary_op() {
        case 0u: { y = f_add(a, b); }
        case 1u: { y = f_mul(a, b); }
        case 2u: { y = f_sub(a, b); }
        default: { y = f_div(a, b); }
    }
    m[binary_off_c() + idx] = f_out(y);
}

// Relu, Sigmoid, Tanh (params::Unary).
@compute @workgroup_size(64)
fn unary(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let idx = index(gid, groups);
    if (idx >= unary_n()) { return; }
    let x = m[unary_off_in() + idx];
    var y: f32;
    switch unary_op() {
        case 0u: { y = f_relu(x); }
        case 1u: { y = f_sigmoid(x); }
        default: { y = f_tanh(x); }
    }
    m[unary_off_out() + idx] = f_out(y);
}

// A strided copy (params::StridedCopy): Transpose, Concat.
@compute @workgroup_size(64)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let idx = index(gid, groups);
    if (idx >= copy_n()) { return; }
    let o = strided2(idx, copy_rank(), COPY_DIMS_AT, COPY_SRC_AT, COPY_DST_AT);
    m[copy_off_out() + o.y] = m[copy_off_in() + o.x];
}

// 2-D convolution, NCHW, with groups, strides, pads and dilations. One
// invocation computes `cb` (1 or 4) consecutive output channels of one
// output pixel, so each input value is loaded once for all of them; each
// output is still summed over (c, kh, kw) in ascending order, bias last.
// (params::Conv)
@compute @workgroup_size(64)
fn conv(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let idx = index(gid, groups);
    let oh_n = conv_oh(); let ow_n = conv_ow(); let mo_n = conv_m(); let cb = conv_cb();
    let blocks = mo_n / cb;
    if (idx >= conv_n() * blocks * oh_n * ow_n) { return; }
    let ow = idx % ow_n;
    let oh = (idx / ow_n) % oh_n;
    let mo0 = ((idx / (ow_n * oh_n)) % blocks) * cb;
    let n = idx / (ow_n * oh_n * blocks);
    let cc = conv_c(); let h = conv_h(); let w = conv_w(); let kh_n = conv_kh(); let kw_n = conv_kw();
    let cpg = cc / conv_group();
    let g = mo0 / (mo_n / conv_group());
    let kvol = kh_n * kw_n;
    let wstride = cpg * kvol;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var c = 0u; c < cpg; c++) {
        let ci = g * cpg + c;
        let xbase = conv_off_x() + (n * cc + ci) * h * w;
        let wbase = conv_off_w() + (mo0 * cpg + c) * kvol;
        for (var kh = 0u; kh < kh_n; kh++) {
            let ih = i32(oh * conv_stride_h() + kh * conv_dilation_h()) - i32(conv_pad_top());
            if (ih < 0 || ih >= i32(h)) { continue; }
            for (var kw = 0u; kw < kw_n; kw++) {
                let iw = i32(ow * conv_stride_w() + kw * conv_dilation_w()) - i32(conv_pad_left());
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
        if (conv_off_bias() != NONE) { y = f_add(y, m[conv_off_bias() + mo0 + q]); }
        m[conv_off_y() + ((n * mo_n + mo0 + q) * oh_n + oh) * ow_n + ow] = f_out(y);
    }
}

// Max or average pooling, NCHW (GlobalAveragePool is a full-size window).
// (params::Pool)
@compute @workgroup_size(64)
fn pool(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let idx = index(gid, groups);
    let oh_n = pool_oh(); let ow_n = pool_ow();
    if (idx >= pool_nc() * oh_n * ow_n) { return; }
    let ow = idx % ow_n;
    let oh = (idx / ow_n) % oh_n;
    let nc = idx / (ow_n * oh_n);
    let h = pool_h(); let w = pool_w();
    let base = pool_off_x() + nc * h * w;
    let is_max = pool_kind() == 0u;
    var acc = 0.0;
    if (is_max) { acc = bitcast<f32>(0xff800000u); }
    var count = 0u;
    for (var kh = 0u; kh < pool_kh(); kh++) {
        let ih = i32(oh * pool_stride_h() + kh) - i32(pool_pad_top());
        for (var kw = 0u; kw < pool_kw(); kw++) {
            let iw = i32(ow * pool_stride_w() + kw) - i32(pool_pad_left());
            if (ih < 0 || ih >= i32(h) || iw < 0 || iw >= i32(w)) {
                if (pool_count_include_pad() != 0u) { count++; }
                continue;
            }
            let x = m[base + u32(ih) * w + u32(iw)];
            if (is_max) { acc = f_max(acc, x); } else { acc = f_add(acc, x); }
            count++;
        }
    }
    if (!is_max) { acc = f_div(acc, f32(max(count, 1u))); }
    m[pool_off_y() + idx] = f_out(acc);
}

// Softmax over `len` elements `inner` apart; one invocation per row
// (params::Softmax).
@compute @workgroup_size(64)
fn softmax(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let idx = index(gid, groups);
    let len = softmax_len(); let inner = softmax_inner();
    if (idx >= softmax_outer() * inner) { return; }
    let o = idx / inner;
    let i = idx - o * inner;
    let base = o * len * inner + i;
    var mx = bitcast<f32>(0xff800000u);
    for (var k = 0u; k < len; k++) { mx = f_max(mx, m[softmax_off_in() + base + k * inner]); }
    var sum = 0.0;
    for (var k = 0u; k < len; k++) { sum = f_add(sum, f_exp(f_sub(m[softmax_off_in() + base + k * inner], mx))); }
    for (var k = 0u; k < len; k++) {
        m[softmax_off_out() + base + k * inner] = f_out(f_div(f_exp(f_sub(m[softmax_off_in() + base + k * inner], mx)), sum));
    }
}

// Inference BatchNormalization, folded on the host (nn/graph/lower.rs) into a
// per-channel scale and shift: y = x * scale + shift (params::BatchNorm).
@compute @workgroup_size(64)
fn batchnorm(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let idx = index(gid, groups);
    if (idx >= batchnorm_n()) { return; }
    let c = (idx / batchnorm_spatial()) % batchnorm_c();
    let x = m[batchnorm_off_x() + idx];
    m[batchnorm_off_y() + idx] = f_out(f_add(f_mul(x, m[batchnorm_off_scale() + c]), m[batchnorm_off_shift() + c]));
}
