//! The README's "Use the core directly" snippet is this example's code: the
//! whole snippet, comments and formatting aside, occurs in `src/lib.rs`.

/// The code without `//` comments or whitespace.
fn normalize(code: &str) -> String {
    code.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .flat_map(str::chars)
        .filter(|c| !c.is_whitespace())
        .collect()
}

#[test]
fn readme_snippet_is_the_example_code() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("README.md");
    let section = readme
        .split("## Use the core directly")
        .nth(1)
        .expect("README has the section");
    let snippet = section
        .split("```rust")
        .nth(1)
        .and_then(|s| s.split_once('\n'))
        .and_then(|(_, s)| s.split("```").next())
        .expect("a rust snippet in the section");
    let snippet = normalize(snippet);
    assert!(snippet.contains("into_action()"), "{snippet}");
    assert!(
        normalize(include_str!("../src/lib.rs")).contains(&snippet),
        "the README snippet is not examples/hyper/src/lib.rs's code:\n{snippet}"
    );
}
