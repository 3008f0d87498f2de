//! Carving node subnets out of the cluster network: pure, shared by the backends that
//! allocate (file, etcd). Kubernetes assigns `spec.podCIDR` itself.

use ipnet::IpNet;
use twill_conf::cluster::PodNetwork;

/// Picks a subnet of `net` for a node: `preferred` when it is still a valid, free
/// subnet of the network (a restarting node gets its old subnet back), else the lowest
/// free one. Skips the network's first subnet, whose network address is the cluster
/// network's own (flannel does the same). `None` when the network is full.
pub fn pick(net: &PodNetwork, taken: &[IpNet], preferred: Option<IpNet>) -> Option<IpNet> {
    let fits = |s: &IpNet| {
        s.prefix_len() == net.subnet_len
            && net.network.contains(s)
            && s.network() == s.addr()
            && !taken.iter().any(|t| overlaps(t, s))
    };
    if let Some(p) = preferred.filter(|p| fits(p)) {
        return Some(p);
    }
    net.network
        .subnets(net.subnet_len)
        .ok()?
        .skip(1)
        .find(|s| fits(s))
}

pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str, len: u8) -> PodNetwork {
        PodNetwork {
            network: s.parse().unwrap(),
            subnet_len: len,
        }
    }

    #[test]
    fn lowest_free_subnet_after_the_first() {
        let n = net("10.244.0.0/16", 24);
        assert_eq!(pick(&n, &[], None), Some("10.244.1.0/24".parse().unwrap()));
        let taken: Vec<IpNet> = vec![
            "10.244.1.0/24".parse().unwrap(),
            "10.244.2.0/23".parse().unwrap(),
        ];
        assert_eq!(
            pick(&n, &taken, None),
            Some("10.244.4.0/24".parse().unwrap())
        );
    }

    #[test]
    fn preferred_subnet_comes_back_when_free_and_valid() {
        let n = net("10.244.0.0/16", 24);
        let p: IpNet = "10.244.77.0/24".parse().unwrap();
        assert_eq!(pick(&n, &[], Some(p)), Some(p));
        assert_eq!(
            pick(&n, &[p], Some(p)),
            Some("10.244.1.0/24".parse().unwrap())
        );
        let wrong_len: IpNet = "10.244.77.0/25".parse().unwrap();
        assert_eq!(
            pick(&n, &[], Some(wrong_len)),
            Some("10.244.1.0/24".parse().unwrap())
        );
        let outside: IpNet = "10.99.1.0/24".parse().unwrap();
        assert_eq!(
            pick(&n, &[], Some(outside)),
            Some("10.244.1.0/24".parse().unwrap())
        );
    }

    #[test]
    fn full_network_gives_none() {
        let n = net("10.244.0.0/22", 24);
        let taken: Vec<IpNet> = (1..4)
            .map(|i| format!("10.244.{i}.0/24").parse().unwrap())
            .collect();
        assert_eq!(pick(&n, &taken, None), None);
        let v6 = net("fd00:1::/56", 64);
        assert_eq!(
            pick(&v6, &[], None),
            Some("fd00:1:0:1::/64".parse().unwrap())
        );
    }
}
