//! The README's "socket.io (socketioxide)" snippet is this example's code:
//! each of its lines (formatting aside) occurs in `src/`.

fn normalize(code: &str) -> String {
    let flat: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    // rustfmt adds a trailing comma when it breaks a `use` list.
    flat.replace(",}", "}")
}

#[test]
fn readme_snippet_is_the_example_code() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("README.md");
    let section = readme
        .split("## socket.io (socketioxide)")
        .nth(1)
        .expect("README has the section");
    let snippet = section
        .split("```rust")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a rust snippet in the section");
    let source = normalize(&format!(
        "{}{}",
        include_str!("../src/lib.rs"),
        include_str!("../src/main.rs")
    ));
    let lines: Vec<&str> = snippet
        .lines()
        .map(|l| l.split("//").next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines.len(), 3, "three lines: {lines:?}");
    for line in lines {
        assert!(
            source.contains(&normalize(line)),
            "README line not in examples/socketio/src: {line}"
        );
    }
}
