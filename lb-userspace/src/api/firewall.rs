//! The firewall's JSON shapes: a VIP's firewall as listed, and an edit of its source
//! lists (`PATCH /v1/vips/{name}/firewall`), applied whole.

use serde::{Deserialize, Serialize};

use crate::firewall::{Prefix, VipFirewall};

/// A VIP's firewall, as the running configuration has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallView {
    pub vip: String,
    #[serde(flatten)]
    pub firewall: VipFirewall,
}

/// Source prefixes to allow, to deny, and to take off either list. A prefix moves from
/// one list to the other; the result must pass the same checks as the file's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallEdit {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Prefix>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<Prefix>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<Prefix>,
}

impl FirewallEdit {
    /// `firewall` with the edit made, or why it cannot be.
    pub fn apply(&self, firewall: &VipFirewall) -> Result<VipFirewall, String> {
        let mut next = firewall.clone();
        for prefix in &self.remove {
            let listed = next.allow_sources.contains(prefix) || next.deny_sources.contains(prefix);
            if !listed {
                return Err(format!(
                    "{prefix} is in neither allow_sources nor deny_sources"
                ));
            }
            next.allow_sources.retain(|p| p != prefix);
            next.deny_sources.retain(|p| p != prefix);
        }
        if let Some(both) = self.allow.iter().find(|p| self.deny.contains(p)) {
            return Err(format!("{both} cannot be allowed and denied at once"));
        }
        add(&self.allow, &mut next.allow_sources, &mut next.deny_sources);
        add(&self.deny, &mut next.deny_sources, &mut next.allow_sources);
        Ok(next)
    }
}

/// Puts `prefixes` on `list` (once), taking them off `other`.
fn add(prefixes: &[Prefix], list: &mut Vec<Prefix>, other: &mut Vec<Prefix>) {
    for prefix in prefixes {
        other.retain(|p| p != prefix);
        if !list.contains(prefix) {
            list.push(*prefix);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Prefix {
        text.parse().unwrap()
    }

    #[test]
    fn an_edit_moves_prefixes_between_lists_and_removes_them() {
        let firewall = VipFirewall {
            allow_sources: vec![p("198.18.0.0/16")],
            deny_sources: vec![p("198.18.5.0/24")],
            ..VipFirewall::default()
        };
        let edit = FirewallEdit {
            allow: vec![p("198.18.5.0/24")],
            deny: vec![p("198.18.6.0/24")],
            remove: vec![p("198.18.0.0/16")],
        };
        let next = edit.apply(&firewall).unwrap();
        assert_eq!(next.allow_sources, [p("198.18.5.0/24")]);
        assert_eq!(next.deny_sources, [p("198.18.6.0/24")]);
        let missing = FirewallEdit {
            remove: vec![p("198.18.7.0/24")],
            ..FirewallEdit::default()
        };
        assert!(missing.apply(&firewall).unwrap_err().contains("neither"));
    }
}
