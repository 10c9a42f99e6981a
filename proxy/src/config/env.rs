//! `DOCMESH_<SECTION>__<FIELD>` environment overrides applied to the parsed TOML tree.

use super::Problems;

/// Prefix of every configuration environment variable.
pub const ENV_PREFIX: &str = "DOCMESH_";

/// Which environment variable set which field path, to name it in error messages.
#[derive(Debug, Default)]
pub(super) struct Origins(Vec<(String, String)>);

impl Origins {
    /// Records more (field path, variable) pairs, looked up after the `DOCMESH_*` ones.
    pub(super) fn add(&mut self, more: Vec<(String, String)>) {
        self.0.extend(more);
    }

    /// The variable that set `path` or one of its parents.
    pub(super) fn var_for(&self, path: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(p, _)| {
                path == p
                    || path
                        .strip_prefix(p.as_str())
                        .is_some_and(|r| r.starts_with('.') || r.starts_with('['))
            })
            .map(|(_, v)| v.as_str())
    }
}

/// Applies every `DOCMESH_A__B...` variable to `root`; variables without `__` after the prefix
/// (such as `DOCMESH_CONFIG`) are not configuration fields and are ignored.
pub(super) fn apply(
    root: &mut toml::Table,
    vars: impl IntoIterator<Item = (String, String)>,
    problems: &mut Problems,
) -> Origins {
    let mut vars: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k[ENV_PREFIX.len()..].contains("__"))
        .collect();
    // Sorted so that `..__0__..` is applied before `..__1__..` (arrays grow by index).
    vars.sort_by_cached_key(|(k, _)| {
        k.split("__")
            .map(|s| (s.parse::<usize>().unwrap_or(usize::MAX), s.to_owned()))
            .collect::<Vec<_>>()
    });
    let mut origins = Origins::default();
    for (var, raw) in vars {
        let segs: Vec<String> = var[ENV_PREFIX.len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if segs.iter().any(|s| s.is_empty()) {
            problems.push(
                String::new(),
                format!("environment variable {var}: empty path segment (use `__` between names)"),
            );
            continue;
        }
        let path = display_path(&segs);
        match set(root, &segs, &raw) {
            Ok(()) => origins.0.push((path, var)),
            Err(msg) => problems.push(path, format!("environment variable {var}: {msg}")),
        }
    }
    origins
}

fn display_path(segs: &[String]) -> String {
    let mut out = String::new();
    for s in segs {
        if s.parse::<usize>().is_ok() {
            out.push('[');
            out.push_str(s);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(s);
        }
    }
    out
}

/// Reads `raw` as a TOML literal when it is one, else as a string; when the field already
/// holds a string, the raw text is kept as is.
fn parse_value(raw: &str, existing: Option<&toml::Value>) -> toml::Value {
    if matches!(existing, Some(toml::Value::String(_))) {
        return toml::Value::String(raw.to_owned());
    }
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

fn set(root: &mut toml::Table, segs: &[String], raw: &str) -> Result<(), String> {
    let Some((last, parents)) = segs.split_last() else {
        return Ok(());
    };
    // `..__ADDRESSES__1=host:80`: one element of an array of scalars.
    if let Ok(idx) = last.parse::<usize>() {
        let Some((name, grand)) = parents.split_last() else {
            return Err("an index needs an array name before it".into());
        };
        let table = walk(root, grand)?;
        let arr = table
            .entry(name.clone())
            .or_insert_with(|| toml::Value::Array(Vec::new()));
        let toml::Value::Array(arr) = arr else {
            return Err(format!("`{name}` is not an array"));
        };
        let value = parse_value(raw, arr.get(idx).or_else(|| arr.first()));
        return match idx.cmp(&arr.len()) {
            std::cmp::Ordering::Less => {
                arr[idx] = value;
                Ok(())
            }
            std::cmp::Ordering::Equal => {
                arr.push(value);
                Ok(())
            }
            std::cmp::Ordering::Greater => Err(skip_message(name, idx, arr.len())),
        };
    }
    let table = walk(root, parents)?;
    let value = parse_value(raw, table.get(last.as_str()));
    table.insert(last.clone(), value);
    Ok(())
}

fn skip_message(name: &str, idx: usize, len: usize) -> String {
    format!("index {idx} skips elements: `{name}` has {len} element(s); set index {len} first")
}

/// Walks (creating as needed) the tables named by `segs`; an index after a name addresses a
/// table element of that array.
fn walk<'a>(root: &'a mut toml::Table, segs: &[String]) -> Result<&'a mut toml::Table, String> {
    let mut cur = root;
    let mut i = 0;
    while i < segs.len() {
        let key = &segs[i];
        if key.parse::<usize>().is_ok() {
            return Err(format!("index `{key}` must follow an array name"));
        }
        match segs.get(i + 1).and_then(|s| s.parse::<usize>().ok()) {
            Some(idx) => {
                let arr = cur
                    .entry(key.clone())
                    .or_insert_with(|| toml::Value::Array(Vec::new()));
                let toml::Value::Array(arr) = arr else {
                    return Err(format!("`{key}` is not an array"));
                };
                if idx > arr.len() {
                    return Err(skip_message(key, idx, arr.len()));
                }
                if idx == arr.len() {
                    arr.push(toml::Value::Table(toml::Table::new()));
                }
                let toml::Value::Table(t) = &mut arr[idx] else {
                    return Err(format!("`{key}[{idx}]` is not a table"));
                };
                cur = t;
                i += 2;
            }
            None => {
                let v = cur
                    .entry(key.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let toml::Value::Table(t) = v else {
                    return Err(format!("`{key}` is not a table"));
                };
                cur = t;
                i += 1;
            }
        }
    }
    Ok(cur)
}
