//! Label and field selectors, as `kubectl` and client libraries write them.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed selector: every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selector(Vec<Requirement>);

/// Splits at commas outside parentheses.
fn terms(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

fn set(values: &str) -> Option<Vec<String>> {
    let inner = values.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|v| v.trim().to_string()).collect())
}

impl Selector {
    pub fn parse(s: &str) -> Result<Selector, String> {
        let mut reqs = Vec::new();
        for t in terms(s) {
            let r = if let Some((k, v)) = t.split_once("!=") {
                Requirement::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = t.split_once(" notin ") {
                Requirement::NotIn(k.trim().into(), set(v).ok_or(format!("bad set in {t:?}"))?)
            } else if let Some((k, v)) = t.split_once(" in ") {
                Requirement::In(k.trim().into(), set(v).ok_or(format!("bad set in {t:?}"))?)
            } else if let Some(k) = t.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else if t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            {
                Requirement::Exists(t.into())
            } else {
                return Err(format!("unable to parse requirement {t:?}"));
            };
            reqs.push(r);
        }
        Ok(Selector(reqs))
    }

    /// Whether `lookup` (a label's or field's value by name) satisfies every requirement.
    pub fn matches(&self, lookup: impl Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Eq(k, v) => lookup(k).as_deref() == Some(v.as_str()),
            Requirement::NotEq(k, v) => lookup(k).as_deref() != Some(v.as_str()),
            Requirement::In(k, vs) => lookup(k).is_some_and(|x| vs.contains(&x)),
            Requirement::NotIn(k, vs) => !lookup(k).is_some_and(|x| vs.contains(&x)),
            Requirement::Exists(k) => lookup(k).is_some(),
            Requirement::NotExists(k) => lookup(k).is_none(),
        })
    }

    pub fn matches_labels(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        self.matches(|k| labels.get(k).and_then(Value::as_str).map(String::from))
    }

    /// Field selectors name dotted paths (`metadata.name`, `status.phase`, `spec.nodeName`).
    pub fn matches_fields(&self, obj: &Value) -> bool {
        self.matches(|path| {
            let v = path.split('.').try_fold(obj, |v, k| v.get(k))?;
            match v {
                Value::String(s) => Some(s.clone()),
                Value::Null => None,
                other => Some(other.to_string()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selectors_match_as_the_api_server_does() {
        let pod = json!({"metadata": {"name": "kv-0", "labels": {"app": "kv", "tier": "db"}},
                         "status": {"phase": "Running"}});
        let yes = [
            "app=kv",
            "app==kv,tier",
            "tier in (db, cache)",
            "app!=web",
            "!gone",
            "app,tier notin (web)",
        ];
        for s in yes {
            assert!(Selector::parse(s).expect(s).matches_labels(&pod), "{s}");
        }
        for s in ["app=web", "gone", "tier notin (db)", "app in (x)"] {
            assert!(!Selector::parse(s).expect(s).matches_labels(&pod), "{s}");
        }
        let f = Selector::parse("metadata.name=kv-0,status.phase=Running").expect("fields");
        assert!(f.matches_fields(&pod));
        assert!(Selector::parse("a b").is_err());
    }
}
