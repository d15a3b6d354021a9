//! The commands that need no controller: `explain`, `render` and `validate`.

use std::path::Path;
use std::process::ExitCode;

use super::explain::{explain, ExplainOptions};
use crate::checks::prometheus::MetricsSet;
use crate::render::{render, render_all, RenderOptions};
use crate::spec;

use super::{fail, template, CliError, ExplainArgs, RenderArgs, ValidateArgs};

pub(super) fn explain_file(args: &ExplainArgs) -> Result<ExitCode, CliError> {
    let set = spec::load_paths(&args.input.all(), &args.spec.load_options());
    let opts = ExplainOptions {
        metrics_set: args.metrics_set,
        scrape_interval: args.scrape_interval,
    };
    print!("{}", explain(&set, &opts));
    let errors = set.errors().count();
    if errors > 0 {
        let what = if set.canaries.is_empty() {
            "no valid Canary to explain"
        } else {
            "the Canaries above are the valid ones"
        };
        let message = format!(
            "{errors} error{} (listed above): {what}",
            if errors == 1 { "" } else { "s" }
        );
        return Err(match args.input.all().first() {
            Some(file) => unless_template(file, message),
            None => fail(message),
        });
    }
    if set.canaries.is_empty() {
        return Err(fail(set.no_canary_message()));
    }
    Ok(ExitCode::SUCCESS)
}

/// The command line as typed, for commands printed back to the user.
fn command_line() -> Vec<String> {
    std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// The failure of an offline command on `file`: `message`, unless the file is a template
/// that failed on its placeholders; then the command that fills it in and runs again.
fn unless_template(file: &Path, message: String) -> CliError {
    fail(template::hint(file, &command_line()).unwrap_or(message))
}

pub(super) fn parse_controller_endpoint(text: &str) -> Result<(String, String, u16), CliError> {
    let bad = || {
        fail(format!(
            "--controller {text:?}: expected SERVICE.NAMESPACE:PORT, e.g. veer-controller.veer-system:8080"
        ))
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let (service, namespace) = host.split_once('.').ok_or_else(bad)?;
    if service.is_empty() || namespace.is_empty() || namespace.contains('.') {
        return Err(bad());
    }
    Ok((service.to_string(), namespace.to_string(), port))
}

pub(super) fn render_file(args: &RenderArgs) -> Result<ExitCode, CliError> {
    let set = spec::load_file(&args.file, &spec::LoadOptions::default());
    let errors: Vec<String> = set.errors().map(ToString::to_string).collect();
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("error: {e}");
        }
        return Err(unless_template(
            &args.file,
            format!(
                "{}: {} error(s); nothing rendered",
                args.file.display(),
                errors.len()
            ),
        ));
    }
    if set.canaries.is_empty() {
        return Err(fail(format!("{}: no Canary found", args.file.display())));
    }
    for warning in set.warnings() {
        eprintln!("warning: {warning}");
    }
    let mut opts = RenderOptions {
        response_metrics: args.metrics_set == MetricsSet::Veer,
        ..RenderOptions::default()
    };
    if let Some(image) = &args.filter_image {
        opts.filter_image.clone_from(image);
    }
    if let Some(sha) = &args.filter_sha256 {
        opts.filter_sha256 = Some(sha.clone());
    }
    if let Some(ns) = &args.gateway_namespace {
        opts.gateway_namespace.clone_from(ns);
    }
    if let Some(endpoint) = &args.controller {
        let (service, namespace, port) = parse_controller_endpoint(endpoint)?;
        opts.controller = RenderOptions::controller_endpoint(&service, &namespace, port);
    }
    // Several canaries share the gateway's one WasmPlugin, so they render together.
    let out = match set.canaries.as_slice() {
        [one] => render(one, &opts),
        all => render_all(all, &opts),
    }
    .map_err(|e| fail(e.to_string()))?;
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

pub(super) fn validate(args: &ValidateArgs) -> Result<ExitCode, CliError> {
    let set = spec::load_paths(&args.input.all(), &args.spec.load_options());
    for problem in &set.problems {
        let severity = match problem.severity {
            spec::Severity::Error => "error",
            spec::Severity::Warning => "warning",
        };
        println!("{severity}: {problem}");
    }
    let mut errors = set.errors().count();
    if set.canaries.is_empty() && errors == 0 {
        println!("error: {}", set.no_canary_message());
        errors += 1;
    }
    let warnings = set.warnings().count();
    if errors > 0 {
        let hints = args.input.all().into_iter().filter(|p| p.is_file());
        for hint in hints.filter_map(|p| template::hint(&p, &command_line())) {
            println!("hint: {hint}");
        }
    }
    for canary in &set.canaries {
        println!("ok: {} ({})", canary.key(), canary.source);
    }
    println!(
        "{} canar{} valid, {} metric template{}, {errors} error{}, {warnings} warning{}",
        set.canaries.len(),
        if set.canaries.len() == 1 { "y" } else { "ies" },
        set.templates.len(),
        if set.templates.len() == 1 { "" } else { "s" },
        if errors == 1 { "" } else { "s" },
        if warnings == 1 { "" } else { "s" },
    );
    Ok(if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
