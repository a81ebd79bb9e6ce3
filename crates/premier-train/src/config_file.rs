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
            // table", naming no field: the first key the file adds under a new table is it.
            let path = match message.strip_prefix("unknown field `") {
                Some(rest) => rest
                    .split('`')
                    .next()
                    .and_then(|name| key_path(&given, Some(&defaults_table), name, "")),
                None if message.starts_with("expected empty table") => {
                    first_new_leaf(&given, Some(&defaults_table), "")
                }
                None => None,
            };
            match path {
                Some(path) => format!("unknown key `{path}`: {message}"),
                None => e.to_string(),
            }
        })
}

/// The path of the first key `name` in `given` that the defaults `base` do not have at that
/// place (an enum variant the defaults do not hold counts as having no defaults).
fn key_path(
    given: &toml::Table,
    base: Option<&toml::Table>,
    name: &str,
    path: &str,
) -> Option<String> {
    given.iter().find_map(|(key, value)| {
        let full = format!("{path}{key}");
        let default = base.and_then(|b| b.get(key));
        match value {
            _ if key == name && default.is_none() => Some(full),
            toml::Value::Table(g) => {
                let b = match default {
                    Some(toml::Value::Table(b)) => Some(b),
                    _ => None,
                };
                key_path(g, b, name, &format!("{full}."))
            }
            _ => None,
        }
    })
}

/// The path of the first non-table value in `given` under a table the defaults `base` do not
/// have (`stage1.timesteps.Uniform.foo`).
fn first_new_leaf(given: &toml::Table, base: Option<&toml::Table>, path: &str) -> Option<String> {
    given.iter().find_map(|(key, value)| {
        let default = base.and_then(|b| b.get(key));
        match value {
            toml::Value::Table(g) => {
                let b = match default {
                    Some(toml::Value::Table(b)) => Some(b),
                    _ => None,
                };
                first_new_leaf(g, b, &format!("{path}{key}."))
            }
            _ if base.is_none() => Some(format!("{path}{key}")),
            _ => None,
        }
    })
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
