//! Config files: TOML over a config's defaults (the files of `premier train` and
//! `premier cold-start`), and the first difference between two configs (what a resume names).

use serde::Serialize;

/// A config from TOML `text` over `defaults`: keys the file names replace the defaults', tables
/// merge key by key, and unknown keys are errors at every depth (`deny_unknown_fields` on every
/// table of `T`), named with their table path (`stage1.optimizer.d00`).
pub fn config_from_toml<T: Serialize + serde::de::DeserializeOwned>(
    text: &str,
    defaults: &T,
) -> Result<T, String> {
    let given: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut base = toml::Table::try_from(defaults).map_err(|e| e.to_string())?;
    let defaults_table = base.clone();
    merge(&mut base, given.clone());
    toml::Value::Table(base)
        .try_into()
        .map_err(|e: toml::de::Error| {
            let message = e.message().to_string();
            // serde names an unknown field without its table; find where the file wrote it.
            // A variant without fields (`[stage1.timesteps.Uniform]`) is "expected empty
            // table", naming no field: the first value the file adds is it.
            let mut added = Vec::new();
            new_keys(&given, Some(&defaults_table), "", &mut added);
            let unknown = message
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split('`').next());
            let path = match unknown {
                Some(name) => added.into_iter().find(|key| key.name == name),
                None if message.starts_with("expected empty table") => {
                    added.into_iter().find(|key| key.is_value)
                }
                None => None,
            };
            match path {
                Some(key) => format!("unknown key `{}`: {message}", key.path),
                None => e.to_string(),
            }
        })
}

/// A key of a config file that its defaults do not have at that place.
struct AddedKey {
    /// Its TOML path (`stage1.optimizer.d00`).
    path: String,
    name: String,
    /// A value rather than a table.
    is_value: bool,
}

/// Every key of `given` that the defaults `base` do not have at that place, in file order, a
/// table before its keys (an enum variant the defaults do not hold counts as having no
/// defaults).
fn new_keys(
    given: &toml::Table,
    base: Option<&toml::Table>,
    path: &str,
    added: &mut Vec<AddedKey>,
) {
    for (key, value) in given {
        let full = format!("{path}{key}");
        let default = base.and_then(|b| b.get(key));
        if default.is_none() {
            added.push(AddedKey {
                path: full.clone(),
                name: key.clone(),
                is_value: !value.is_table(),
            });
        }
        if let toml::Value::Table(g) = value {
            let b = match default {
                Some(toml::Value::Table(b)) => Some(b),
                _ => None,
            };
            new_keys(g, b, &format!("{full}."), added);
        }
    }
}

/// `given` names another variant of the enum whose default is `base` (`[stage1.timesteps.
/// FluxShifted]` over the default `LogitNormal`, or another `kind` of an internally tagged one,
/// `[stage1.lr_schedule]`): it replaces the default instead of merging.
fn names_other_variant(base: &toml::Table, given: &toml::Table) -> bool {
    let other_kind = matches!((base.get("kind"), given.get("kind")), (Some(a), Some(b)) if a != b);
    other_kind
        || (base.len() == 1 && given.len() == 1 && given.keys().all(|k| !base.contains_key(k)))
}

fn merge(base: &mut toml::Table, given: toml::Table) {
    for (key, value) in given {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(g)) if !names_other_variant(b, &g) => {
                merge(b, g)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// The first key (as a TOML path) whose value differs between `a` and `b`, with both values;
/// top-level keys in `skip` are not compared.
pub(crate) fn first_difference<T: Serialize>(
    a: &T,
    b: &T,
    skip: &[&str],
) -> Option<(String, String, String)> {
    fn walk(
        a: &toml::Table,
        b: &toml::Table,
        path: &str,
        skip: &[&str],
    ) -> Option<(String, String, String)> {
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|k| !(path.is_empty() && skip.contains(&k.as_str())))
            .find_map(|key| {
                let full = format!("{path}{key}");
                match (a.get(key), b.get(key)) {
                    (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => {
                        walk(x, y, &format!("{full}."), &[])
                    }
                    (x, y) if x == y => None,
                    (x, y) => {
                        let show = |v: Option<&toml::Value>| {
                            v.map_or("(none)".to_string(), |v| v.to_string())
                        };
                        Some((full, show(x), show(y)))
                    }
                }
            })
    }
    let a = toml::Table::try_from(a).ok()?;
    let b = toml::Table::try_from(b).ok()?;
    walk(&a, &b, "", skip)
}
