//! Spec files that are templates: `${NAME}` placeholders meant for `envsubst`, as in the
//! demo's Canary (`manifests/local/demo/canary.yaml`, whose webhook URL is only known when
//! the demo runs). Such a file fails to load on its placeholders; the offline commands then
//! say that it is a template and print the one command that fills it in and runs them again.
//!
//! A placeholder alone is not an error: a webhook's `metadata.cmd` may hold shell variables
//! for flagger-loadtester. The hint is only given for a file that did not load.

use std::path::Path;

/// The distinct `${NAME}` placeholders in `text`, in order of first appearance (`NAME` as
/// envsubst reads it: a letter or `_`, then letters, digits or `_`).
pub fn placeholders(text: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        rest = &rest[at + 2..];
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..len];
        let starts_well = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if starts_well && rest[len..].starts_with('}') && !found.iter().any(|f| f == name) {
            found.push(name.to_string());
        }
    }
    found
}

/// An example value for a placeholder, so the printed command runs as it is.
fn example_value(name: &str) -> &'static str {
    if name.ends_with("URL") || name.ends_with("ADDRESS") {
        "http://127.0.0.1:8080"
    } else {
        "value"
    }
}

/// For a spec file that failed to load: if it is a template, the sentence that says so,
/// with the command that fills it in and runs `rerun` (the command line as typed, whose
/// argument equal to `file` is replaced by the filled-in copy). `None` for any other file.
pub fn hint(file: &Path, rerun: &[String]) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    let names = placeholders(&text);
    if names.is_empty() {
        return None;
    }
    let stem = file
        .file_stem()
        .map_or("canary".into(), |s| s.to_string_lossy());
    let filled = format!("/tmp/{stem}.yaml");
    let file_text = file.display().to_string();
    let shown: Vec<String> = names.iter().map(|n| format!("${{{n}}}")).collect();
    let assignments: Vec<String> = names
        .iter()
        .map(|n| format!("{n}={}", example_value(n)))
        .collect();
    let rerun: Vec<String> = rerun
        .iter()
        .map(|a| {
            if *a == file_text {
                filled.clone()
            } else {
                shell_word(a)
            }
        })
        .collect();
    Some(format!(
        "{file_text} is a template: fill in {} first, e.g. {} envsubst '{}' < {} > {filled} && {}",
        shown.join(", "),
        assignments.join(" "),
        shown.join(" "),
        shell_word(&file_text),
        rerun.join(" ")
    ))
}

/// `word` quoted for sh when it needs it.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_envsubst_names_in_braces() {
        let text =
            "url: ${WEBHOOK_URL}/a\nb: ${WEBHOOK_URL}/b\nc: ${_X1} $PLAIN ${1BAD} ${} ${OPEN";
        assert_eq!(placeholders(text), ["WEBHOOK_URL", "_X1"]);
        assert!(placeholders("no placeholders: {{ namespace }} $HOME").is_empty());
    }

    #[test]
    fn shell_words_are_quoted_when_needed() {
        assert_eq!(shell_word("--metrics-set=veer"), "--metrics-set=veer");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }
}
