//! `cpr version` and `cpr --version`: what this binary is, as build.rs stamped it.

use argh::FromArgs;
use serde::Serialize;

use super::Output;
use crate::Error;

#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "version")]
/// Print cpr's version, git commit, build date, target and features (the same as cpr --version).
pub struct VersionCmd {
    /// text (default) or json
    #[argh(option, default = "Output::Text")]
    pub output: Output,
}

/// The build's identity. `version` is what every bundle's manifest records as `cprVersion`.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct BuildInfo {
    pub version: &'static str,
    pub git_commit: &'static str,
    pub build_date: &'static str,
    pub target: &'static str,
    /// Linked with no shared library: the binary runs as an initramfs's /init and in an image
    /// holding nothing else.
    pub static_binary: bool,
    pub features: Vec<&'static str>,
}

pub fn build_info() -> BuildInfo {
    BuildInfo {
        version: env!("CARGO_PKG_VERSION"),
        git_commit: env!("CPR_GIT_COMMIT"),
        build_date: env!("CPR_BUILD_DATE"),
        target: env!("CPR_TARGET"),
        static_binary: cfg!(target_feature = "crt-static"),
        features: env!("CPR_FEATURES")
            .split(',')
            .filter(|f| !f.is_empty())
            .collect(),
    }
}

/// The first line is `cpr VERSION`, as scripts expect of `--version`; the rest is one `key: value` a line.
pub fn text(info: &BuildInfo) -> String {
    let features = if info.features.is_empty() {
        "(none)".to_string()
    } else {
        info.features.join(", ")
    };
    format!(
        "cpr {}\ncommit: {}\nbuilt: {}\ntarget: {}{}\nfeatures: {features}\n",
        info.version,
        info.git_commit,
        info.build_date,
        info.target,
        if info.static_binary { " (static)" } else { "" },
    )
}

pub fn run(cmd: VersionCmd) -> Result<(), Error> {
    let info = build_info();
    match cmd.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&info).expect("build info serializes")
        ),
        Output::Text => print!("{}", text(&info)),
    }
    Ok(())
}
