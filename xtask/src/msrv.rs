//! The declared `rust-version`s are honest: no crate of the workspace
//! depends on a package that declares a higher `rust-version` than its own.
//! Dependencies are read from `cargo metadata` (the locked resolution, every
//! platform): each crate's normal, build and dev dependencies, and theirs
//! transitively (normal and build: what compiling it builds). Run by
//! `cargo xtask ci` as a test of this crate.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use serde_json::Value;

/// A `rust-version` as `(major, minor, patch)`; `1.89` is `1.89.0`.
type Version = (u64, u64, u64);

fn parse(version: &str) -> Option<Version> {
    let mut parts = version.split('.').map(|p| p.parse::<u64>().ok());
    let major = parts.next()??;
    let minor = parts.next().unwrap_or(Some(0))?;
    let patch = parts.next().unwrap_or(Some(0))?;
    parts.next().is_none().then_some((major, minor, patch))
}

/// Every crate of the workspace whose dependencies declare a higher
/// `rust-version` than it does, one line each; a crate that declares none
/// is listed too (there is nothing to be honest about).
pub(crate) fn violations(metadata: &Value) -> Result<Vec<String>, String> {
    let packages: HashMap<&str, &Value> = metadata["packages"]
        .as_array()
        .ok_or("metadata has no packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let nodes: HashMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .ok_or("metadata has no resolve graph")?
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let rust_version = |id: &str| {
        packages
            .get(id)
            .and_then(|p| p["rust_version"].as_str())
            .and_then(parse)
    };
    let name = |id: &str| {
        packages.get(id).map_or_else(
            || id.to_owned(),
            |p| {
                format!(
                    "{} {}",
                    p["name"].as_str().unwrap_or("?"),
                    p["version"].as_str().unwrap_or("?")
                )
            },
        )
    };

    let mut found = Vec::new();
    for member in metadata["workspace_members"]
        .as_array()
        .ok_or("metadata has no workspace members")?
        .iter()
        .filter_map(Value::as_str)
    {
        let Some(declared) = rust_version(member) else {
            found.push(format!("{} declares no rust-version", name(member)));
            continue;
        };
        let mut seen = BTreeSet::new();
        let mut stack = vec![member];
        while let Some(id) = stack.pop() {
            let deps = nodes.get(id).and_then(|n| n["deps"].as_array());
            for dep in deps.into_iter().flatten() {
                let Some(pkg) = dep["pkg"].as_str() else {
                    continue;
                };
                let dev_only = dep["dep_kinds"]
                    .as_array()
                    .is_some_and(|kinds| kinds.iter().all(|k| k["kind"] == "dev"));
                // A dependency's own dev-dependencies are never built for it.
                if (dev_only && id != member) || !seen.insert(pkg) {
                    continue;
                }
                stack.push(pkg);
            }
        }
        for dep in seen {
            if let Some(needs) = rust_version(dep).filter(|v| *v > declared) {
                found.push(format!(
                    "{} declares rust-version {}.{}.{}, but its dependency {} needs {}.{}.{}",
                    name(member),
                    declared.0,
                    declared.1,
                    declared.2,
                    name(dep),
                    needs.0,
                    needs.1,
                    needs.2
                ));
            }
        }
    }
    Ok(found)
}

/// Runs `cargo metadata` on the workspace and checks it.
pub(crate) fn check() -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .current_dir(crate::root())
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .map_err(|e| format!("cargo metadata: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let metadata: Value =
        serde_json::from_slice(&output.stdout).map_err(|e| format!("cargo metadata: {e}"))?;
    let found = violations(&metadata)?;
    if found.is_empty() {
        Ok(())
    } else {
        Err(format!("dishonest rust-version:\n{}", found.join("\n")))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn declared_rust_versions_are_honest() {
        if let Err(err) = check() {
            panic!("{err}");
        }
    }

    /// app 1.80 -> lib (none) -> deep 1.85; app's dev-dependency tool 1.90
    /// needs nothing higher; lib's dev-dependency bench 2.0 is never built.
    fn graph(app: &str, tool: &str) -> Value {
        let pkg = |id: &str, rv: Option<&str>| json!({"id": id, "name": id, "version": "1.0.0", "rust_version": rv});
        let dep = |id: &str, kind: Option<&str>| json!({"pkg": id, "dep_kinds": [{"kind": kind}]});
        json!({
            "workspace_members": ["app"],
            "packages": [pkg("app", Some(app)), pkg("lib", None), pkg("deep", Some("1.85")),
                         pkg("tool", Some(tool)), pkg("bench", Some("2.0"))],
            "resolve": {"nodes": [
                {"id": "app", "deps": [dep("lib", None), dep("tool", Some("dev"))]},
                {"id": "lib", "deps": [dep("deep", Some("build")), dep("bench", Some("dev"))]},
                {"id": "deep", "deps": []},
                {"id": "tool", "deps": []},
                {"id": "bench", "deps": []},
            ]},
        })
    }

    #[test]
    fn a_transitive_or_dev_dependency_needing_more_is_found() {
        let found = violations(&graph("1.80", "1.79")).unwrap();
        assert_eq!(
            found,
            ["app 1.0.0 declares rust-version 1.80.0, but its dependency deep 1.0.0 needs 1.85.0"]
        );
        assert_eq!(violations(&graph("1.85", "1.90")).unwrap().len(), 1);
        assert!(violations(&graph("1.90", "1.90")).unwrap().is_empty());
    }

    #[test]
    fn versions_compare_as_numbers() {
        assert_eq!(parse("1.89"), Some((1, 89, 0)));
        assert!(parse("1.100").unwrap() > parse("1.89.9").unwrap());
        assert_eq!(parse("1.x"), None);
    }
}
