#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Every relative link in the project's Markdown resolves: the file (or directory) exists,
//! and a `#fragment` names a heading of the target file, as GitHub renders it. External
//! links (`https:`, `mailto:`) are not fetched. The project has to stand on its own in a
//! fresh clone, so a link to something outside the repository fails too.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use veer_e2e::workspace_root;

/// Directories that hold no project documentation: build output, tool installs, VCS.
const SKIPPED_DIRS: &[&str] = &["target", "out", "node_modules"];

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            if !name.starts_with('.') && !SKIPPED_DIRS.contains(&name.as_str()) {
                markdown_files(&path, out);
            }
        } else if name.ends_with(".md") {
            out.push(path);
        }
    }
}

/// The text outside fenced code blocks and inline code spans, line by line (1-based line
/// numbers kept), so that examples in code are not taken for links.
fn prose_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fence: Option<&str> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => {
                fence = Some(m);
                continue;
            }
            (Some(open), Some(m)) if open == m => {
                fence = None;
                continue;
            }
            (Some(_), _) => continue,
            (None, None) => {}
        }
        let mut prose = String::new();
        let mut in_code = false;
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
            } else if !in_code {
                prose.push(c);
            }
        }
        out.push((i + 1, prose));
    }
    out
}

/// Link targets on one line of prose: inline `[text](target "title")` and reference
/// definitions `[label]: target`.
fn link_targets(line: &str) -> Vec<String> {
    let mut targets = Vec::new();
    if let Some(rest) = line.trim_start().strip_prefix('[') {
        if let Some((_, def)) = rest.split_once("]:") {
            if let Some(t) = def.split_whitespace().next() {
                targets.push(t.trim_matches(['<', '>']).to_string());
            }
            return targets;
        }
    }
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        // Balanced parentheses, as Markdown allows in a link destination.
        let mut depth = 0usize;
        let mut end = None;
        for (i, c) in after.char_indices() {
            match c {
                '(' => depth += 1,
                ')' if depth == 0 => {
                    end = Some(i);
                    break;
                }
                ')' => depth -= 1,
                _ => {}
            }
        }
        let Some(end) = end else { break };
        let inside = after[..end].trim();
        let target = inside.split_whitespace().next().unwrap_or("");
        targets.push(target.trim_matches(['<', '>']).to_string());
        rest = &after[end..];
    }
    targets
}

/// GitHub's anchor for a heading: lowercase, spaces to `-`, everything but letters,
/// digits, `-` and `_` dropped. Repeats get `-1`, `-2`, ...
fn heading_anchors(text: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    for (_, line) in prose_lines_keeping_code(text) {
        let Some(title) = line.trim_start().strip_prefix('#') else {
            continue;
        };
        let title = title.trim_start_matches('#');
        if !title.starts_with(' ') {
            continue;
        }
        let mut slug = String::new();
        for c in title.trim().to_lowercase().chars() {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                slug.push(c);
            } else if c == ' ' {
                slug.push('-');
            }
        }
        let mut candidate = slug.clone();
        let mut n = 0;
        while anchors.contains(&candidate) {
            n += 1;
            candidate = format!("{slug}-{n}");
        }
        anchors.insert(candidate);
    }
    anchors
}

/// Lines outside fenced code blocks, with inline code kept (a heading's code span is part
/// of its anchor text, minus the backticks).
fn prose_lines_keeping_code(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_fence = false;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
            continue;
        }
        if !in_fence {
            out.push((i + 1, line.replace('`', "")));
        }
    }
    out
}

/// Resolves `..` and `.` without touching the file system, so a link that leaves the
/// repository can be recognised as such.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Every broken relative link in `file`, as `file:line: target: why`.
fn broken_links(root: &Path, file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let shown = file
        .strip_prefix(root)
        .unwrap_or(file)
        .display()
        .to_string();
    let mut broken = Vec::new();
    for (line_no, line) in prose_lines(&text) {
        for target in link_targets(&line) {
            if target.is_empty()
                || target.contains("://")
                || target.starts_with("mailto:")
                || target.starts_with("tel:")
            {
                continue;
            }
            let (path_part, fragment) = match target.split_once('#') {
                Some((p, f)) => (p, Some(f)),
                None => (target.as_str(), None),
            };
            let resolved = if path_part.is_empty() {
                file.to_path_buf()
            } else {
                normalize(&file.parent().unwrap().join(path_part))
            };
            let mut problem = None;
            if !resolved.starts_with(root) {
                problem = Some("points outside the repository".to_string());
            } else if !resolved.exists() {
                problem = Some(format!(
                    "{} does not exist",
                    resolved.strip_prefix(root).unwrap().display()
                ));
            } else if let Some(fragment) = fragment {
                if resolved.extension().is_some_and(|e| e == "md") {
                    let anchors = heading_anchors(&std::fs::read_to_string(&resolved).unwrap());
                    if !anchors.contains(fragment) {
                        problem = Some(format!(
                            "no heading #{fragment} in {} (headings: {})",
                            resolved.strip_prefix(root).unwrap().display(),
                            anchors.into_iter().collect::<Vec<_>>().join(", ")
                        ));
                    }
                }
            }
            if let Some(why) = problem {
                broken.push(format!("{shown}:{line_no}: ({target}): {why}"));
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_in_the_markdown_resolves() {
    let root = workspace_root();
    let mut files = Vec::new();
    markdown_files(&root, &mut files);
    let shown: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    // The documents the README promises must be among the checked files.
    for required in [
        "README.md",
        "docs/routing-table.md",
        "docs/analysis.md",
        "manifests/README.md",
        "BENCHMARKS.md",
        "RELIABILITY.md",
    ] {
        assert!(
            shown.iter().any(|s| s == required),
            "{required} is missing (checked: {shown:?})"
        );
    }
    // A checker that finds no links at all would pass anything.
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let readme_links: Vec<String> = prose_lines(&readme)
        .iter()
        .flat_map(|(_, line)| link_targets(line))
        .filter(|t| !t.contains("://"))
        .collect();
    for doc in ["docs/routing-table.md", "docs/analysis.md"] {
        assert!(
            readme_links.iter().any(|l| l.starts_with(doc)),
            "README.md does not link {doc}: {readme_links:?}"
        );
    }
    let broken: Vec<String> = files.iter().flat_map(|f| broken_links(&root, f)).collect();
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The checker itself finds what it must: a missing file, a missing heading, a link that
/// leaves the repository; and it leaves code, external links and good links alone.
#[test]
fn the_link_checker_finds_broken_links_and_only_those() {
    let root = std::env::temp_dir().join(format!("veer-doc-links-{}", std::process::id()));
    let docs = root.join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(
        docs.join("target.md"),
        "# Target\n\n## The decision, per request\n\n## `veer render`\n",
    )
    .unwrap();
    let page = docs.join("page.md");
    std::fs::write(
        &page,
        "[ok](target.md) [ok](target.md#the-decision-per-request) [ok](target.md#veer-render)\n\
         [ok](#local) [external](https://example.com/x.md) [ok dir](.)\n\
         `[in code](missing.md)`\n\
         ```\n[in a fence](missing.md)\n```\n\
         ## Local\n\
         [gone](missing.md)\n\
         [no heading](target.md#nope)\n\
         [outside](../../../shared/design/controller.md)\n\
         [ref]: also-missing.md\n",
    )
    .unwrap();
    let broken = broken_links(&root, &page);
    let _ = std::fs::remove_dir_all(&root);
    assert_eq!(broken.len(), 4, "{broken:#?}");
    assert!(broken[0].contains("(missing.md)") && broken[0].contains(":8:"));
    assert!(broken[1].contains("(target.md#nope)") && broken[1].contains("no heading #nope"));
    assert!(broken[2].contains("points outside the repository"));
    assert!(broken[3].contains("(also-missing.md)"));
}
