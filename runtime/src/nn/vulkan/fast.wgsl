// The `fast` prelude of kernels.wgsl: the device's own arithmetic. The
// driver may fuse a*b+c, and exp, tanh and division are its own: results
// are reproducible on one device and driver, not across devices.

fn f_add(a: f32, b: f32) -> f32 { return a + b; }
fn f_sub(a: f32, b: f32) -> f32 { return a - b; }
fn f_mul(a: f32, b: f32) -> f32 { return a * b; }
fn f_div(a: f32, b: f32) -> f32 { return a / b; }
fn f_max(a: f32, b: f32) -> f32 { return max(a, b); }
fn f_exp(x: f32) -> f32 { return exp(x); }
fn f_relu(x: f32) -> f32 { return max(x, 0.0); }
fn f_sigmoid(x: f32) -> f32 { return 1.0 / (1.0 + exp(-x)); }
fn f_tanh(x: f32) -> f32 { return tanh(x); }
fn f_out(x: f32) -> f32 { return x; }
