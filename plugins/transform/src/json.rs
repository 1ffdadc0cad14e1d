//! JSON body edits by JSON Pointer (RFC 6901): set (creating missing objects), remove, rename.

use serde_json::{Map, Value};

/// An edit; `V` is what `Set` stores (rendered into a JSON value per body by `apply`).
#[derive(Debug, Clone)]
pub enum JsonEdit<V = Value> {
    Set(Vec<String>, V),
    Remove(Vec<String>),
    Rename(Vec<String>, Vec<String>),
}

/// `/a/b~1c` -> `["a", "b/c"]`.
pub fn pointer(at: &str, p: &str) -> Result<Vec<String>, String> {
    let Some(rest) = p.strip_prefix('/') else {
        return Err(format!(
            "{at}: {p:?} is not a JSON pointer (it starts with '/', e.g. \"/user/id\")"
        ));
    };
    Ok(rest.split('/').map(|t| t.replace("~1", "/").replace("~0", "~")).collect())
}

fn parent_mut<'a>(cur: &'a mut Value, path: &[String], create: bool) -> Option<&'a mut Value> {
    let Some((token, rest)) = path.split_first() else { return Some(cur) };
    let next = match cur {
        Value::Object(map) => match create {
            true => map.entry(token.clone()).or_insert_with(|| Value::Object(Map::new())),
            false => map.get_mut(token)?,
        },
        Value::Array(items) => items.get_mut(token.parse::<usize>().ok()?)?,
        _ => return None,
    };
    parent_mut(next, rest, create)
}

fn take(root: &mut Value, path: &[String]) -> Option<Value> {
    let (last, parent) = path.split_last()?;
    match parent_mut(root, parent, false)? {
        Value::Object(map) => map.remove(last),
        Value::Array(items) => {
            let i = last.parse::<usize>().ok().filter(|i| *i < items.len())?;
            Some(items.remove(i))
        }
        _ => None,
    }
}

fn put(root: &mut Value, path: &[String], value: Value) {
    let Some((last, parent)) = path.split_last() else {
        *root = value;
        return;
    };
    match parent_mut(root, parent, true) {
        Some(Value::Object(map)) => {
            map.insert(last.clone(), value);
        }
        Some(Value::Array(items)) => match last.parse::<usize>() {
            Ok(i) if i < items.len() => items[i] = value,
            _ if last == "-" => items.push(value),
            _ => {}
        },
        _ => {}
    }
}

/// Applies `edits` in order; a path that does not exist is skipped.
pub fn apply<V>(root: &mut Value, edits: &[JsonEdit<V>], render: &dyn Fn(&V) -> Value) {
    for edit in edits {
        match edit {
            JsonEdit::Set(path, value) => put(root, path, render(value)),
            JsonEdit::Remove(path) => {
                take(root, path);
            }
            JsonEdit::Rename(from, to) => {
                if let Some(v) = take(root, from) {
                    put(root, to, v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> Vec<String> {
        pointer("t", s).unwrap()
    }

    #[test]
    fn set_remove_and_rename_by_pointer() {
        let mut v = json!({"user": {"name": "ada", "password": "x"}, "tags": ["a", "b"], "a/b": 1});
        let edits = [
            JsonEdit::Remove(p("/user/password")),
            JsonEdit::Rename(p("/user/name"), p("/user/username")),
            JsonEdit::Set(p("/meta/source"), json!("sluice")),
            JsonEdit::Set(p("/tags/-"), json!("c")),
            JsonEdit::Remove(p("/tags/0")),
            JsonEdit::Remove(p("/a~1b")),
            JsonEdit::Remove(p("/missing/deep")),
            JsonEdit::Rename(p("/missing"), p("/elsewhere")),
        ];
        apply(&mut v, &edits, &|v| v.clone());
        assert_eq!(
            v,
            json!({"user": {"username": "ada"}, "tags": ["b", "c"], "meta": {"source": "sluice"}})
        );
        assert!(
            pointer("config.x", "user")
                .unwrap_err()
                .starts_with("config.x: \"user\" is not a JSON pointer")
        );
    }
}
