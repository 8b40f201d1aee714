//! `xhyve-provider`: the JSON-RPC daemon the Vagrant and Packer shims drive, and its client: the
//! command line here, the rest in the library (`src/lib.rs`).

use lexopt::prelude::*;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::process::ExitCode;
use xhyve_provider::client::{self, CallError};
use xhyve_provider::home::Home;
use xhyve_provider::{machines, server};

const USAGE: &str = "\
usage:
  xhyve-provider serve [--home DIR]
  xhyve-provider call [--home DIR] [--no-start] METHOD ['{json params}']
  xhyve-provider box add SOURCE [--name N] [--version V] [--architecture A]
                        [--checksum C --checksum-type T] [--force] [--home DIR]
  xhyve-provider box list [--home DIR]
  xhyve-provider box remove NAME [--version V] [--architecture A] [--home DIR]
  xhyve-provider run-vmm MACHINE_DIR -- XHYVE ARGS...   (internal: machine.start's runner)

The daemon listens on $XHYVE_HOME/provider.sock (XHYVE_HOME defaults to ~/.xhyve). `call` and
`box` start it in the background when none runs. Methods and params: provider/API.md.
Exit status: 0 success, 1 JSON-RPC error, 2 usage or connection error.";

fn usage_error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("xhyve-provider: {msg}\n{USAGE}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    // `run-vmm MACHINE_DIR -- XHYVE ARGS...`: internal, started by the daemon (machine.start).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "run-vmm") {
        return match (args.get(2), args.get(3)) {
            (Some(dir), Some(sep)) if sep == "--" => {
                let argv: Vec<String> = args[4..].iter().map(|a| a.to_string_lossy().into_owned()).collect();
                machines::process::run_vmm(std::path::Path::new(dir), &argv)
            }
            _ => usage_error("usage: xhyve-provider run-vmm MACHINE_DIR -- XHYVE ARGS..."),
        };
    }
    match run() {
        Ok(code) => code,
        Err(e) => usage_error(e),
    }
}

fn run() -> Result<ExitCode, lexopt::Error> {
    let mut p = lexopt::Parser::from_env();
    let mut home: Option<PathBuf> = None;
    let mut no_start = false;
    let mut positional: Vec<String> = Vec::new();
    let mut opts = Map::new();
    let mut force = false;
    while let Some(arg) = p.next()? {
        match arg {
            Short('h') | Long("help") => {
                println!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            Short('V') => {
                println!("xhyve-provider {}", env!("CARGO_PKG_VERSION"));
                return Ok(ExitCode::SUCCESS);
            }
            Long("home") => home = Some(p.value()?.into()),
            Long("no-start") => no_start = true,
            Long("force") => force = true,
            Long(o @ ("name" | "version" | "architecture" | "checksum" | "checksum-type")) => {
                let key = o.replace('-', "_");
                opts.insert(key, json!(p.value()?.string()?));
            }
            Value(v) => positional.push(v.string()?),
            _ => return Err(arg.unexpected()),
        }
    }
    let home = match Home::resolve(home) {
        Ok(h) => h,
        Err(e) => return Ok(usage_error(e)),
    };
    let args: Vec<&str> = positional.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["serve"] => Ok(match server::serve(&home) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xhyve-provider serve: {e}");
                ExitCode::from(2)
            }
        }),
        ["call", method, rest @ ..] => {
            let params = match rest {
                [] => Value::Object(Map::new()),
                [json] => match serde_json::from_str::<Value>(json) {
                    Ok(v) => v,
                    Err(e) => return Ok(usage_error(format!("params are not valid JSON: {e}"))),
                },
                _ => return Ok(usage_error("call takes METHOD and at most one JSON argument")),
            };
            Ok(do_call(&home, method, params, !no_start))
        }
        ["box", "add", source] => {
            // The daemon does not share our working directory: send absolute paths.
            let src = if source.contains("://") || source.starts_with('/') {
                source.to_string()
            } else {
                match std::path::absolute(source) {
                    Ok(p) => p.display().to_string(),
                    Err(e) => return Ok(usage_error(e)),
                }
            };
            opts.insert("source".into(), json!(src));
            if force {
                opts.insert("force".into(), json!(true));
            }
            Ok(do_call(&home, "box.add", Value::Object(opts), !no_start))
        }
        ["box", "list"] => Ok(do_call(&home, "box.list", json!({}), !no_start)),
        ["box", "remove", name] => {
            opts.insert("name".into(), json!(name));
            Ok(do_call(&home, "box.remove", Value::Object(opts), !no_start))
        }
        [] => Ok(usage_error("missing command")),
        _ => Ok(usage_error(format!("unknown command: {}", args.join(" ")))),
    }
}

fn do_call(home: &Home, method: &str, params: Value, autostart: bool) -> ExitCode {
    match client::call(home, method, params, autostart) {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(CallError::Rpc { code, message, data }) => {
            eprintln!("error {code}: {message}");
            if let Some(d) = data {
                eprintln!("{d}");
            }
            ExitCode::from(1)
        }
        Err(CallError::Transport(m)) => {
            eprintln!("xhyve-provider: {m}");
            ExitCode::from(2)
        }
    }
}
