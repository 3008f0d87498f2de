//! The part of a Node the overlay reads, parsed as it arrives. A kubelet's Node is
//! 12–17 KB of JSON (status.images alone is 40 image names with digests; managed
//! fields, labels, conditions); the agent needs its name, podCIDRs and `twill.io/`
//! annotations. Everything else is skipped while parsing, before any list page, watch
//! event or cache holds it, so 5,000 Nodes cost the agent their records only.

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

/// Annotations with this prefix are kept; the others are dropped as they are read.
const KEPT_ANNOTATIONS: &str = "twill.io/";

/// A Node as the overlay sees it: `kind: Node` for the API, but only these fields.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SlimNode {
    #[serde(deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<SlimSpec>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimSpec {
    #[serde(rename = "podCIDR", default)]
    pub pod_cidr: Option<String>,
    #[serde(rename = "podCIDRs", default)]
    pub pod_cidrs: Option<Vec<String>>,
}

impl From<&Node> for SlimNode {
    fn from(n: &Node) -> Self {
        let annotations = n.metadata.annotations.as_ref().map(|a| {
            a.iter()
                .filter(|(k, _)| k.starts_with(KEPT_ANNOTATIONS))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        });
        SlimNode {
            metadata: ObjectMeta {
                name: n.metadata.name.clone(),
                resource_version: n.metadata.resource_version.clone(),
                uid: n.metadata.uid.clone(),
                annotations,
                ..ObjectMeta::default()
            },
            spec: n.spec.as_ref().map(|s| SlimSpec {
                pod_cidr: s.pod_cidr.clone(),
                pod_cidrs: s.pod_cidrs.clone(),
            }),
        }
    }
}

impl kube::Resource for SlimNode {
    type DynamicType = ();
    type Scope = kube::core::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Node".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "nodes".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// What the watcher and the overlay read of `metadata`: the resource version (watches
/// resume from it), the name, the uid and Twill's annotations. Managed fields, labels
/// and other annotations are skipped unparsed.
pub(super) fn slim_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Wire {
        name: Option<String>,
        resource_version: Option<String>,
        uid: Option<String>,
        #[serde(default, deserialize_with = "twill_annotations")]
        annotations: Option<BTreeMap<String, String>>,
    }
    let w = Wire::deserialize(d)?;
    Ok(ObjectMeta {
        name: w.name,
        resource_version: w.resource_version,
        uid: w.uid,
        annotations: w.annotations,
        ..ObjectMeta::default()
    })
}

fn twill_annotations<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    struct Kept;
    impl<'de> Visitor<'de> for Kept {
        type Value = Option<BTreeMap<String, String>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of annotations")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(Kept)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut kept = BTreeMap::new();
            while let Some(key) = m.next_key::<Cow<'de, str>>()? {
                if key.starts_with(KEPT_ANNOTATIONS) {
                    kept.insert(key.into_owned(), m.next_value::<String>()?);
                } else {
                    m.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            Ok(Some(kept))
        }
    }
    d.deserialize_option(Kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_what_the_overlay_reads_and_drops_the_rest() {
        let doc = include_str!("testdata/node-joined.json");
        let slim: SlimNode = serde_json::from_str(doc).expect("a v1.20 Node parses");
        let full: Node = serde_json::from_str(doc).expect("a Node");
        assert_eq!(slim.metadata.name, full.metadata.name);
        assert_eq!(
            slim.metadata.resource_version,
            full.metadata.resource_version
        );
        assert!(full.metadata.managed_fields.is_some() || full.metadata.labels.is_some());
        assert!(slim.metadata.managed_fields.is_none());
        assert!(slim.metadata.labels.is_none());
        let kept = slim.metadata.annotations.clone().unwrap_or_default();
        assert!(!kept.is_empty(), "the Twill annotations are kept");
        assert!(
            kept.keys().all(|k| k.starts_with(KEPT_ANNOTATIONS)),
            "{kept:?}"
        );
        let full_twill: BTreeMap<String, String> = full
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k.starts_with(KEPT_ANNOTATIONS))
            .collect();
        assert_eq!(kept, full_twill);
        let spec = slim.spec.clone().expect("spec");
        let full_spec = full.spec.clone().expect("spec");
        assert_eq!(spec.pod_cidr, full_spec.pod_cidr);
        assert_eq!(spec.pod_cidrs, full_spec.pod_cidrs);
        // The same from a full Node (the agent's own, read with get).
        let from_full = SlimNode::from(&full);
        assert_eq!(from_full.metadata.annotations, slim.metadata.annotations);
        assert_eq!(from_full.spec.map(|s| s.pod_cidrs), Some(spec.pod_cidrs));
    }

    #[test]
    fn a_node_without_annotations_or_spec_parses() {
        let slim: SlimNode =
            serde_json::from_str(r#"{"metadata": {"name": "n", "annotations": null}}"#)
                .expect("parses");
        assert_eq!(slim.metadata.annotations, None);
        assert!(slim.spec.is_none());
    }
}
