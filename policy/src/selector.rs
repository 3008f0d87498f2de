//! Kubernetes `LabelSelector`: `matchLabels` and `matchExpressions`, ANDed.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::{FieldPath, ModelError};
use crate::json;

/// Labels of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// The operator of one `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Operator {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
}

/// A label selector; the empty selector `{}` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct LabelSelector {
    pub match_labels: Labels,
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    /// Whether `labels` satisfy every `matchLabels` pair and every expression.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
            && self
                .match_expressions
                .iter()
                .all(|requirement| requirement.matches(labels))
    }

    /// Parses a `LabelSelector` object found at `path`.
    pub fn from_json(value: &Value, path: &FieldPath) -> Result<LabelSelector, ModelError> {
        let object = json::object(value, path)?;
        let match_labels = json::labels(object, "matchLabels", path)?;
        let match_expressions = json::list(object, "matchExpressions", path)?
            .into_iter()
            .map(|(item, path)| Requirement::from_json(item, &path))
            .collect::<Result<_, _>>()?;
        Ok(LabelSelector {
            match_labels,
            match_expressions,
        })
    }
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match &self.operator {
            Operator::In(values) => value.is_some_and(|v| values.contains(v)),
            // As in Kubernetes: a pod without the key satisfies NotIn.
            Operator::NotIn(values) => !value.is_some_and(|v| values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }

    fn from_json(value: &Value, path: &FieldPath) -> Result<Requirement, ModelError> {
        let object = json::object(value, path)?;
        let key = json::req_str(object, "key", path)?.to_string();
        let operator_name = json::req_str(object, "operator", path)?;
        let values = json::str_list(object, "values", path)?;
        if !matches!(operator_name, "In" | "NotIn" | "Exists" | "DoesNotExist") {
            return Err(ModelError::BadValue {
                path: path.field("operator"),
                value: Value::from(operator_name).to_string(),
                what: "one of In, NotIn, Exists, DoesNotExist",
            });
        }
        // The API server enforces this too; checking keeps a hand-written object honest.
        let wants_values = matches!(operator_name, "In" | "NotIn");
        if wants_values == values.is_empty() {
            let must = if wants_values { "must not" } else { "must" };
            return Err(ModelError::Invalid {
                path: path.field("values"),
                reason: format!("{must} be empty for operator {operator_name}"),
            });
        }
        let operator = match operator_name {
            "In" => Operator::In(values),
            "NotIn" => Operator::NotIn(values),
            "Exists" => Operator::Exists,
            _ => Operator::DoesNotExist,
        };
        Ok(Requirement { key, operator })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn selector(value: Value) -> LabelSelector {
        LabelSelector::from_json(&value, &FieldPath::default().field("sel")).expect("selector")
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_selector_matches_everything() {
        let empty = selector(json!({}));
        assert!(empty.matches(&labels(&[])));
        assert!(empty.matches(&labels(&[("app", "web")])));
    }

    #[test]
    fn match_labels_needs_every_pair() {
        let sel = selector(json!({"matchLabels": {"app": "web", "tier": "front"}}));
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "front"), ("x", "y")])));
        assert!(!sel.matches(&labels(&[("app", "web")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "back")])));
    }

    #[test]
    fn every_operator() {
        let case = |op: &str, values: &[&str], pod: &[(&str, &str)]| {
            selector(
                json!({"matchExpressions": [{"key": "app", "operator": op, "values": values}]}),
            )
            .matches(&labels(pod))
        };
        assert!(case("In", &["web", "db"], &[("app", "db")]));
        assert!(!case("In", &["web"], &[("app", "db")]));
        assert!(!case("In", &["web"], &[]));
        assert!(case("NotIn", &["web"], &[("app", "db")]));
        assert!(case("NotIn", &["web"], &[]));
        assert!(!case("NotIn", &["web"], &[("app", "web")]));
        assert!(case("Exists", &[], &[("app", "")]));
        assert!(!case("Exists", &[], &[("other", "x")]));
        assert!(case("DoesNotExist", &[], &[("other", "x")]));
        assert!(!case("DoesNotExist", &[], &[("app", "web")]));
    }

    #[test]
    fn labels_and_expressions_are_anded() {
        let sel = selector(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]
        }));
        assert!(sel.matches(&labels(&[("app", "web"), ("env", "prod")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("env", "dev")])));
        assert!(!sel.matches(&labels(&[("env", "prod")])));
    }

    #[test]
    fn bad_expressions_name_the_field() {
        let err = |value: Value| {
            LabelSelector::from_json(&value, &FieldPath::default().field("sel"))
                .expect_err("must fail")
                .to_string()
        };
        assert_eq!(
            err(json!({"matchExpressions": [{"key": "a", "operator": "Has"}]})),
            "sel.matchExpressions[0].operator: \"Has\" is not one of In, NotIn, Exists, DoesNotExist"
        );
        assert_eq!(
            err(json!({"matchExpressions": [{"key": "a", "operator": "In"}]})),
            "sel.matchExpressions[0].values: must not be empty for operator In"
        );
        assert_eq!(
            err(json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]})),
            "sel.matchExpressions[0].values: must be empty for operator Exists"
        );
        assert_eq!(
            err(json!({"matchLabels": {"a": 1}})),
            "sel.matchLabels.a: expected a string, found 1"
        );
    }
}
