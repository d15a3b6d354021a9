//! Loading YAML into a [`SpecSet`]: files and directories, documents by kind and
//! apiVersion, templates resolved across every input, and the problems found, each naming
//! the file, the document, the field path and the reason.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::check::{check_canary, CheckContext};
use super::raw::{classify_ignored, deserialize_tracked, RawCanary, RawMetricTemplate};
use super::{
    CanarySpec, LoadOptions, MetricTemplate, SpecSource, FLAGGER_API_VERSION, VEER_API_VERSION,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// Something wrong or ignored in a spec. Errors drop the document; warnings keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecProblem {
    pub severity: Severity,
    pub file: PathBuf,
    /// 1-based document index; `None` for problems with the file as a whole.
    pub doc: Option<usize>,
    /// Field path, e.g. `spec.analysis.stepWeight`.
    pub path: Option<String>,
    pub message: String,
}

impl fmt::Display for SpecProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(doc) = self.doc {
            write!(f, " (doc {doc})")?;
        }
        f.write_str(": ")?;
        if let Some(path) = &self.path {
            write!(f, "{path}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Everything loaded from files and directories: the good canaries and templates, and
/// every problem found (errors of dropped documents and warnings of kept ones).
#[derive(Debug, Clone, Default)]
pub struct SpecSet {
    pub canaries: Vec<CanarySpec>,
    pub templates: Vec<MetricTemplate>,
    pub problems: Vec<SpecProblem>,
    /// Every file read, in order: where templates were looked for.
    pub files: Vec<PathBuf>,
}

impl SpecSet {
    pub fn errors(&self) -> impl Iterator<Item = &SpecProblem> {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &SpecProblem> {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Warning)
    }

    /// The problems of one file and document (e.g. the warnings of one canary).
    pub fn problems_of(&self, source: &SpecSource) -> impl Iterator<Item = &SpecProblem> {
        let source = source.clone();
        self.problems
            .iter()
            .filter(move |p| p.file == source.file && p.doc == Some(source.doc))
    }

    /// The files read, for messages: `a.yaml, b.yaml` (the first few, then how many more).
    pub fn files_read(&self) -> String {
        const SHOWN: usize = 8;
        if self.files.is_empty() {
            return "no file (no *.yaml or *.yml in the paths given)".to_string();
        }
        let mut names: Vec<String> = self
            .files
            .iter()
            .take(SHOWN)
            .map(|f| f.display().to_string())
            .collect();
        if self.files.len() > SHOWN {
            names.push(format!("and {} more", self.files.len() - SHOWN));
        }
        names.join(", ")
    }
}

impl SpecSet {
    /// Why a set without errors holds nothing to run, explain or validate.
    pub fn no_canary_message(&self) -> String {
        if self.files.is_empty() {
            return "no Canary found: no *.yaml or *.yml file in the paths given".to_string();
        }
        format!(
            "no Canary found in {}: no document of kind Canary",
            self.files_read()
        )
    }
}

/// The directory itself could not be listed.
#[derive(Debug, thiserror::Error)]
#[error("cannot read canary directory {}: {source}", dir.display())]
pub struct SpecDirError {
    pub dir: PathBuf,
    pub source: std::io::Error,
}

/// The `*.yaml`/`*.yml` files in `dir` (not recursive, as kubectl without `-R`), in name
/// order.
fn yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_yaml = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e == "yaml" || e == "yml");
        if is_yaml && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads `files` and loads them together; an unreadable file is an error problem.
fn load_files(files: Vec<PathBuf>, mut problems: Vec<SpecProblem>, opts: &LoadOptions) -> SpecSet {
    let mut inputs = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => inputs.push((file, text)),
            Err(e) => problems.push(file_problem(&file, format!("cannot read: {e}"))),
        }
    }
    let mut loaded = load_texts(&inputs, opts);
    problems.append(&mut loaded.problems);
    loaded.problems = problems;
    loaded
}

fn file_problem(file: &Path, message: String) -> SpecProblem {
    SpecProblem {
        severity: Severity::Error,
        file: file.to_path_buf(),
        doc: None,
        path: None,
        message,
    }
}

/// Loads every YAML file in `dir` (the controller's `--canaries`). A directory that cannot
/// be listed is an error of its own: the controller keeps the canaries it has.
pub fn load_dir(dir: &Path, opts: &LoadOptions) -> Result<SpecSet, SpecDirError> {
    let files = yaml_files(dir).map_err(|source| SpecDirError {
        dir: dir.to_path_buf(),
        source,
    })?;
    Ok(load_files(files, Vec::new(), opts))
}

/// Loads one file (`veer render FILE`). An unreadable file is one error problem in the set.
pub fn load_file(file: &Path, opts: &LoadOptions) -> SpecSet {
    load_paths(&[file.to_path_buf()], opts)
}

/// Loads files and directories together, as kubectl's `-f` takes them (`veer explain`,
/// `veer validate`): a directory stands for its YAML files, not recursively. Templates are
/// resolved across all of them. A path that does not exist or cannot be read is an error
/// problem naming it.
pub fn load_paths(paths: &[PathBuf], opts: &LoadOptions) -> SpecSet {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        if path.is_dir() {
            match yaml_files(path) {
                Ok(mut found) => files.append(&mut found),
                Err(e) => problems.push(file_problem(path, format!("cannot list: {e}"))),
            }
        } else if path.exists() {
            files.push(path.clone());
        } else {
            problems.push(file_problem(path, "no such file or directory".into()));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    files.retain(|f| seen.insert(f.clone()));
    load_files(files, problems, opts)
}

/// Loads YAML texts, each named by the file it came from. Templates are resolved across all
/// of them, so a canary may refer to a template in another file.
pub fn load_texts(inputs: &[(PathBuf, String)], opts: &LoadOptions) -> SpecSet {
    let mut set = SpecSet {
        files: inputs.iter().map(|(file, _)| file.clone()).collect(),
        ..SpecSet::default()
    };
    let mut raw_canaries = Vec::new();
    for (file, text) in inputs {
        for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
            let source = SpecSource {
                file: file.clone(),
                doc: index + 1,
            };
            let value = match serde_norway::Value::deserialize(document) {
                Ok(v) => v,
                Err(e) => {
                    set.problems
                        .push(problem(Severity::Error, &source, None, format!("{e}")));
                    // The YAML stream cannot be resynchronised after a syntax error.
                    break;
                }
            };
            read_document(value, source, &mut set, &mut raw_canaries);
        }
    }
    let context = CheckContext {
        templates: &set.templates,
        files_read: set.files_read(),
        opts,
    };
    let mut checked = Vec::new();
    for (source, raw) in raw_canaries {
        let mut problems = Vec::new();
        let canary = check_canary(raw, &source, &context, &mut problems);
        checked.push((source, canary, problems));
    }
    for (source, canary, mut problems) in checked {
        if let Some(canary) = canary {
            let duplicate = set
                .canaries
                .iter()
                .find(|c| c.name == canary.name && c.namespace == canary.namespace);
            if let Some(first) = duplicate {
                problems.push(problem(
                    Severity::Error,
                    &source,
                    Some("metadata.name".into()),
                    format!(
                        "canary {} is already defined in {}; this one is ignored",
                        canary.key(),
                        first.source
                    ),
                ));
            } else if !problems.iter().any(|p| p.severity == Severity::Error) {
                set.canaries.push(canary);
            }
        }
        set.problems.append(&mut problems);
    }
    set
}

pub(super) fn problem(
    severity: Severity,
    source: &SpecSource,
    path: Option<String>,
    message: String,
) -> SpecProblem {
    SpecProblem {
        severity,
        file: source.file.clone(),
        doc: Some(source.doc),
        path,
        message,
    }
}

fn read_document(
    value: serde_norway::Value,
    source: SpecSource,
    set: &mut SpecSet,
    raw_canaries: &mut Vec<(SpecSource, RawCanary)>,
) {
    if value.is_null() {
        return; // an empty document, e.g. a trailing `---`
    }
    let api_version = value
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let kind = value
        .get("kind")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    match (api_version.as_str(), kind.as_str()) {
        (FLAGGER_API_VERSION | VEER_API_VERSION, "Canary") => {
            let mut warnings = Vec::new();
            match deserialize_tracked::<RawCanary>(value, &mut warnings) {
                Ok(raw) => {
                    for path in warnings {
                        if let Some(w) = classify_ignored(&path) {
                            set.problems
                                .push(problem(Severity::Warning, &source, Some(path), w));
                        }
                    }
                    raw_canaries.push((source, raw));
                }
                Err((path, message)) => {
                    set.problems
                        .push(problem(Severity::Error, &source, path, message));
                }
            }
        }
        (FLAGGER_API_VERSION, "MetricTemplate") => {
            let mut warnings = Vec::new();
            match deserialize_tracked::<RawMetricTemplate>(value, &mut warnings) {
                Ok(raw) => {
                    for path in warnings {
                        if let Some(w) = classify_ignored(&path) {
                            set.problems
                                .push(problem(Severity::Warning, &source, Some(path), w));
                        }
                    }
                    if let Some(w) = template_warnings(&raw) {
                        set.problems.push(problem(
                            Severity::Warning,
                            &source,
                            Some(w.0.into()),
                            w.1,
                        ));
                    }
                    set.templates.push(MetricTemplate {
                        source,
                        namespace: raw
                            .metadata
                            .namespace
                            .unwrap_or_else(|| "default".to_string()),
                        name: raw.metadata.name,
                        provider_type: raw.spec.provider.r#type,
                        address: raw.spec.provider.address,
                        query: raw.spec.query,
                    });
                }
                Err((path, message)) => {
                    set.problems
                        .push(problem(Severity::Error, &source, path, message));
                }
            }
        }
        (_, "Canary" | "MetricTemplate") => {
            set.problems.push(problem(
                Severity::Error,
                &source,
                Some("apiVersion".into()),
                unsupported_api_version(&api_version, &kind),
            ));
        }
        _ => {
            tracing::debug!(
                file = %source.file.display(),
                doc = source.doc,
                %api_version,
                %kind,
                "skipping a document that is not a Canary or MetricTemplate"
            );
        }
    }
}

/// Why a Canary or MetricTemplate of another apiVersion is not read, and what to write.
fn unsupported_api_version(api_version: &str, kind: &str) -> String {
    let supported = if kind == "Canary" {
        format!("{FLAGGER_API_VERSION} (or veer's {VEER_API_VERSION})")
    } else {
        FLAGGER_API_VERSION.to_string()
    };
    let found = if api_version.is_empty() {
        "missing".to_string()
    } else {
        format!("{api_version:?} is not supported")
    };
    let advice = if api_version.starts_with("flagger.app/v1alpha") {
        format!(
            "; as Flagger's upgrade guide says, replace it with {FLAGGER_API_VERSION} (and a \
             Canary's spec.canaryAnalysis with spec.analysis)"
        )
    } else {
        String::new()
    };
    format!("{found} for a {kind}: veer reads {supported}{advice}")
}

fn template_warnings(raw: &RawMetricTemplate) -> Option<(&'static str, String)> {
    let p = &raw.spec.provider;
    if p.secret_ref.is_some() || p.headers.is_some() {
        return Some((
            "spec.provider",
            "secretRef/headers: accepted but not used by veer (queries are sent without \
             credentials; put an authenticating proxy in front of Prometheus)"
                .to_string(),
        ));
    }
    None
}
