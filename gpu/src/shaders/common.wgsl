// Shared by every elementwise-style kernel: the flat index of this invocation when the
// dispatch is folded into two dimensions (an axis holds at most 65 535 workgroups).
override WG: u32 = 256u;

fn flat_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}
