//! Pod networks the backends' unit tests share.

use twill_conf::cluster::PodNetwork;

/// `10.244.0.0/16` cut into /24s.
pub(crate) fn v4() -> Vec<PodNetwork> {
    vec![PodNetwork {
        network: "10.244.0.0/16".parse().unwrap(),
        subnet_len: 24,
    }]
}

/// [`v4`] plus `fd00:10:244::/56` cut into /64s.
pub(crate) fn dual_stack() -> Vec<PodNetwork> {
    let mut n = v4();
    n.push(PodNetwork {
        network: "fd00:10:244::/56".parse().unwrap(),
        subnet_len: 64,
    });
    n
}
