// -f32::MAX is written bitcast<f32>(0xff7fffffu) in these kernels: Tint (Chromium) rejects
// the decimal literal -3.4028235e38 as unrepresentable.
// Shared by every elementwise-style kernel: the flat index of this invocation when the
// dispatch is folded into two dimensions (an axis holds at most 65 535 workgroups).
override WG: u32 = 256u;

fn flat_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}
