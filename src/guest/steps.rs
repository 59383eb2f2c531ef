//! Provisioning steps: the profile's `[[provision]]` commands, run in order in each VM
//! (the steps of its role and its name) after it has booted, through a shell on the VM
//! (ssh, see [`crate::guest::ssh`]).
//!
//! Each finished step is recorded on the VM, in `/var/lib/lab/steps/NAME`, with a digest of
//! the command that ran: a later `lab up` skips a step whose record matches, and runs it
//! again when its command changed. A step that fails is not recorded; the steps after it do
//! not run. Output is streamed line by line to the caller (the VM's progress line), and
//! the last lines are kept for the error. Each step has its own timeout: the command is
//! killed in the VM (`timeout`) and lab stops waiting for it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::profile::Profile;
use crate::runner::{Cmd, Exit, quote};

/// Where a VM records its finished steps.
pub const DONE_DIR: &str = "/var/lib/lab/steps";

/// One step, rendered for one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    /// The shell command, its `{{ vars }}` filled in.
    pub run: String,
    pub timeout: Duration,
    /// Digest of `run`: what the VM's record must hold for the step to count as done.
    pub digest: String,
}

/// The steps for VM `vm` (of role `role`), in profile order, rendered with the profile's
/// `[vars]` and `vm`, `profile`. A step with neither `role` nor `vm` runs everywhere.
pub fn steps_for(profile: &Profile, vm: &str, role: Option<&str>) -> Result<Vec<Step>> {
    let context = context(profile, vm);
    let mut steps = Vec::new();
    for (i, step) in profile.provision.iter().enumerate() {
        let for_role = step.role.as_deref().is_none_or(|r| Some(r) == role);
        let for_vm = step.vm.as_deref().is_none_or(|v| v == vm);
        if !(for_role && for_vm) {
            continue;
        }
        let label = format!(
            "{}: provision[{i}] ({}).run",
            profile.locate(&format!("provision.{i}.run")),
            step.name
        );
        let run = crate::kickstart::render_text(&label, &step.run, &context)?;
        steps.push(Step {
            name: step.name.clone(),
            digest: format!("{:016x}", crate::names::fnv1a(run.as_bytes())),
            run,
            timeout: Duration::from_secs(step.timeout),
        });
    }
    Ok(steps)
}

/// The readiness probes (`[[ready]]`) for VM `vm`, rendered as steps are; a probe's
/// digest is unused.
pub fn probes_for(profile: &Profile, vm: &str, role: Option<&str>) -> Result<Vec<Step>> {
    let context = context(profile, vm);
    let mut probes = Vec::new();
    for (i, probe) in profile.ready.iter().enumerate() {
        let for_role = probe.role.as_deref().is_none_or(|r| Some(r) == role);
        let for_vm = probe.vm.as_deref().is_none_or(|v| v == vm);
        if !(for_role && for_vm) {
            continue;
        }
        let label = format!(
            "{}: ready[{i}] ({}).run",
            profile.locate(&format!("ready.{i}.run")),
            probe.name
        );
        probes.push(Step {
            name: probe.name.clone(),
            run: crate::kickstart::render_text(&label, &probe.run, &context)?,
            timeout: Duration::from_secs(probe.timeout),
            digest: String::new(),
        });
    }
    Ok(probes)
}

/// What `{{ }}` in a step or probe may name: the profile's `[vars]`, and `vm`, `profile`,
/// `domain` (the lab's DNS domain, `PROFILE.lab` unless `[network] domain` says otherwise,
/// so that a step names another VM as `db.{{ domain }}` in a copy of the profile too).
fn context(profile: &Profile, vm: &str) -> BTreeMap<String, minijinja::Value> {
    let mut context: BTreeMap<String, minijinja::Value> = profile
        .vars
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                minijinja::Value::from(minijinja::value::Serde(v)),
            )
        })
        .collect();
    context.insert("vm".into(), vm.into());
    context.insert("profile".into(), profile.name.as_str().into());
    context.insert("domain".into(), profile.domain().into());
    context
}

/// A step name is a file name on the VM.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || name.starts_with('.')
    {
        bail!(crate::error::usage(format!(
            "provision step name {name:?}: use letters, digits, '-', '_' and '.' only"
        )));
    }
    Ok(())
}

/// What became of one step on one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepResult {
    pub name: String,
    /// `done` (ran now), `skipped` (done before, same command), `failed`, `timed-out`.
    pub outcome: String,
    pub ms: u64,
    /// The last lines the step printed (for a failure).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tail: Vec<String>,
}

/// The script a VM's shell runs for a step: skip when recorded, run under `timeout`,
/// record on success. The step's writes reach the disk before its record and the record
/// before lab hears of it, so a VM powered off hard afterwards neither repeats the step
/// nor skips one that did not last. Everything the step prints goes to stdout. The step
/// runs in the C.UTF-8 locale, which every distribution lab installs has, whatever the
/// VM's own default (RDO's packstack wants a UTF-8 locale; lab ssh passes none).
pub fn step_script(step: &Step, done_dir: &str) -> String {
    let record = format!("{done_dir}/{}", step.name);
    format!(
        "exec 2>&1\n\
         export LANG=C.UTF-8 LC_ALL=C.UTF-8\n\
         if [ \"$(cat {record} 2>/dev/null)\" = {digest} ]; then echo {SKIPPED}; exit 0; fi\n\
         if command -v timeout >/dev/null 2>&1; then\n\
         \x20   timeout -s KILL {secs} sh -c {run} </dev/null\n\
         else\n\
         \x20   sh -c {run} </dev/null\n\
         fi\n\
         rc=$?\n\
         [ $rc -eq 0 ] || exit $rc\n\
         sync\n\
         mkdir -p {done_dir} && echo {digest} >{record}.new && mv {record}.new {record} && sync || exit 125\n",
        record = quote(&record),
        digest = step.digest,
        secs = step.timeout.as_secs().max(1),
        run = quote(&step.run),
        done_dir = quote(done_dir),
    )
}

/// The line a VM prints for a step it had done before.
pub const SKIPPED: &str = "LAB-STEP-SKIPPED";

/// How many lines of a failed step's output the error shows.
const TAIL_LINES: usize = 15;

/// Run `steps` in order through `shell` (a command that runs the script it reads on
/// stdin: `ssh ... sh -s`, or `sh -s` for a local test), each line of output handed to
/// `on_line`. Stops at the first step that fails; the error names the VM, the step, how
/// it ended and its last lines.
pub fn run_steps(
    vm: &str,
    steps: &[Step],
    shell: &dyn Fn() -> Cmd,
    done_dir: &str,
    on_line: &dyn Fn(&str, &str),
) -> Result<Vec<StepResult>> {
    let mut results = Vec::new();
    for step in steps {
        check_name(&step.name)?;
        let started = Instant::now();
        let mut skipped = false;
        // lab waits a little longer than the step's own timeout (which the VM enforces)
        // before it kills the shell. ssh's own messages (connection refused, host key
        // changed) come on its stderr, streamed with the step's output.
        let ran = shell()
            .stdin(step_script(step, done_dir))
            .timeout(step.timeout + Duration::from_secs(10))
            .stream(TAIL_LINES, &mut |line| {
                if line == SKIPPED {
                    skipped = true;
                } else {
                    on_line(&step.name, line);
                }
            })
            .map_err(anyhow::Error::new)
            .with_context(|| format!("{vm}: step {}", step.name))?;
        let ms = started.elapsed().as_millis() as u64;
        let ended = match ran.exit {
            Exit::Code(0) => {
                results.push(StepResult {
                    name: step.name.clone(),
                    outcome: if skipped { "skipped" } else { "done" }.into(),
                    ms,
                    tail: Vec::new(),
                });
                continue;
            }
            // `timeout -s KILL` in the VM: 137; lab's own deadline: TimedOut.
            Exit::Code(137) | Exit::TimedOut(_) => {
                format!("did not finish within {} s", step.timeout.as_secs())
            }
            Exit::Code(125) => format!("ran, but could not be recorded in {done_dir}"),
            Exit::Code(255) => "the connection failed (ssh exit status 255)".to_string(),
            Exit::Code(_) => format!("failed with {}", ran.exit),
            Exit::Signal(_) => format!("was {}", ran.exit),
        };
        let tail: Vec<&str> = ran
            .tail
            .iter()
            .map(String::as_str)
            .filter(|l| *l != SKIPPED)
            .collect();
        let shown = if tail.is_empty() {
            " (it printed nothing)".to_string()
        } else {
            format!("; its last lines:\n    {}", tail.join("\n    "))
        };
        bail!("{vm}: provision step {} {ended}{shown}", step.name);
    }
    Ok(results)
}

/// Which of `steps` the VM has recorded as done with the same command: asked in one shell
/// run. Returns (name, done) in step order.
pub fn recorded(shell: Cmd, steps: &[Step], done_dir: &str) -> Result<Vec<(String, bool)>> {
    let mut script = String::new();
    for step in steps {
        check_name(&step.name)?;
        let record = quote(&format!("{done_dir}/{}", step.name));
        script.push_str(&format!(
            "if [ \"$(cat {record} 2>/dev/null)\" = {} ]; then echo done {}; else echo todo {}; fi\n",
            step.digest, step.name, step.name
        ));
    }
    let out = shell
        .stdin(script)
        .run()
        .map_err(anyhow::Error::new)?
        .stdout;
    let done: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("done "))
        .collect();
    Ok(steps
        .iter()
        .map(|s| (s.name.clone(), done.contains(&s.name.as_str())))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ProfileSource;
    use std::sync::Mutex;

    fn profile(steps: &str) -> Profile {
        Profile::parse(
            &format!(
                "name = \"p\"\n[base]\nos = \"centos-stream9\"\nkickstart = \"centos-stream9.ks.j2\"\ninstall = \"http://example.invalid/os/\"\n[vars]\nrelease = \"caracal\"\n\
                 [[vm]]\nname = \"controller\"\nrole = \"controller\"\n\
                 [[vm]]\nname = \"compute\"\ncount = 2\nrole = \"compute\"\n{steps}"
            ),
            ProfileSource::File("p.toml".into()),
        )
        .unwrap()
    }

    const STEPS: &str = "[[provision]]\nname = \"repo\"\nrun = \"echo {{ release }} on {{ vm }}\"\n\
        [[provision]]\nname = \"stack\"\nrun = \"echo stack\"\nrole = \"controller\"\n\
        [[provision]]\nname = \"only2\"\nrun = \"echo two\"\nvm = \"compute2\"\n";

    #[test]
    fn steps_are_chosen_by_role_and_vm_and_rendered() {
        let p = profile(STEPS);
        let names = |vm: &str, role: &str| -> Vec<String> {
            steps_for(&p, vm, Some(role))
                .unwrap()
                .into_iter()
                .map(|s| s.name)
                .collect()
        };
        assert_eq!(names("controller", "controller"), ["repo", "stack"]);
        assert_eq!(names("compute1", "compute"), ["repo"]);
        assert_eq!(names("compute2", "compute"), ["repo", "only2"]);
        let s = steps_for(&p, "compute1", Some("compute")).unwrap();
        assert_eq!(s[0].run, "echo caracal on compute1");
        assert_ne!(
            s[0].digest,
            steps_for(&p, "compute2", Some("compute")).unwrap()[0].digest
        );
        // The lab's domain, for naming another VM.
        let p =
            profile("[[provision]]\nname = \"peer\"\nrun = \"ping -c1 controller.{{ domain }}\"\n");
        let s = steps_for(&p, "compute1", Some("compute")).unwrap();
        assert_eq!(s[0].run, "ping -c1 controller.p.lab");
    }

    /// The shipped debian-stack: every VM's steps and probes render, name the other VMs
    /// in the lab's domain, and are shell that `sh -n` reads.
    #[test]
    fn the_debian_stack_steps_render_to_valid_shell() {
        let (_, text) = crate::profile::BUILT_IN
            .iter()
            .find(|(n, _)| *n == "debian-stack")
            .unwrap();
        let p = Profile::parse(text, ProfileSource::BuiltIn).unwrap();
        let mut all = String::new();
        for (vm, spec) in p.instances() {
            let role = spec.role.as_deref();
            let steps = steps_for(&p, &vm, role).unwrap();
            assert_eq!(steps[0].name, "apt-sources", "{vm}");
            for s in steps.iter().chain(&probes_for(&p, &vm, role).unwrap()) {
                let checked = Cmd::new("sh").args(["-n", "-c", &s.run]).capture().unwrap();
                assert!(checked.success(), "{vm} {}: {}", s.name, checked.stderr);
                all.push_str(&s.run);
            }
        }
        for wired in [
            "deb http://deb.debian.org/debian bookworm main",
            "proxy_pass http://app.debian-stack.lab:8000;",
            "getent ahostsv4 app.debian-stack.lab",
            "host=db.debian-stack.lab dbname=demo",
            "This row was read from PostgreSQL on db",
        ] {
            assert!(all.contains(wired), "{wired}");
        }
        // The app the python-app step writes is Python that parses.
        let app = all
            .split_once("<<'PY'\n")
            .and_then(|(_, rest)| rest.split_once("\nPY\n"))
            .unwrap()
            .0;
        let parsed = Cmd::new("python3")
            .args(["-c", "import ast, sys; ast.parse(sys.stdin.read())"])
            .stdin(app.as_bytes().to_vec())
            .capture()
            .unwrap();
        assert!(parsed.success(), "{}", parsed.stderr);
    }

    #[test]
    fn an_undefined_variable_in_a_step_names_the_step() {
        let p = profile("[[provision]]\nname = \"bad\"\nrun = \"echo {{ nope }}\"\n");
        let err = format!(
            "{:#}",
            steps_for(&p, "controller", Some("controller")).unwrap_err()
        );
        assert!(err.contains("bad"), "{err}");
        assert!(err.contains("nope"), "{err}");
    }

    fn step(name: &str, run: &str, secs: u64) -> Step {
        Step {
            name: name.into(),
            run: run.into(),
            timeout: Duration::from_secs(secs),
            digest: format!("{:016x}", crate::names::fnv1a(run.as_bytes())),
        }
    }

    /// The step runner with a local `sh -s` as the VM's shell: the same scripts that go
    /// over ssh, run here, with the records in a temporary directory.
    #[test]
    fn steps_run_in_order_are_recorded_skipped_on_rerun_and_stop_at_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let done = dir.path().join("steps");
        let done = done.to_str().unwrap();
        let witness = dir.path().join("ran");
        let shell = || Cmd::new("sh").arg("-s");
        let seen = Mutex::new(Vec::new());
        let on_line = |s: &str, l: &str| seen.lock().unwrap().push(format!("{s}: {l}"));
        let ok = step(
            "first",
            &format!("echo one; echo first >>{}", witness.display()),
            30,
        );
        let bad = step("second", "echo about to fail; echo oops >&2; exit 3", 30);
        let never = step("third", &format!("echo third >>{}", witness.display()), 30);

        let err = run_steps(
            "node1",
            &[ok.clone(), bad.clone(), never.clone()],
            &shell,
            done,
            &on_line,
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("node1: provision step second failed with exit status 3"),
            "{msg}"
        );
        assert!(
            msg.contains("about to fail") && msg.contains("oops"),
            "{msg}"
        );
        assert_eq!(std::fs::read_to_string(&witness).unwrap(), "first\n");
        assert!(seen.lock().unwrap().contains(&"first: one".to_string()));
        assert!(std::path::Path::new(done).join("first").exists());
        assert!(!std::path::Path::new(done).join("second").exists());

        // Re-run with the failing step fixed: the first is skipped, not run again.
        let fixed = step("second", "echo fixed", 30);
        let results =
            run_steps("node1", &[ok.clone(), fixed, never], &shell, done, &on_line).unwrap();
        let outcomes: Vec<&str> = results.iter().map(|r| r.outcome.as_str()).collect();
        assert_eq!(outcomes, ["skipped", "done", "done"]);
        assert_eq!(std::fs::read_to_string(&witness).unwrap(), "first\nthird\n");

        // A step whose command changed runs again.
        let changed = step(
            "first",
            &format!("echo first-v2 >>{}", witness.display()),
            30,
        );
        let results = run_steps("node1", &[changed], &shell, done, &on_line).unwrap();
        assert_eq!(results[0].outcome, "done");
        let rec = recorded(shell(), &[ok, step("zzz", "true", 1)], done).unwrap();
        assert_eq!(
            rec,
            [("first".to_string(), false), ("zzz".to_string(), false)]
        );
    }

    /// The step's shell is started with a locale of its own (as an ssh that passed the
    /// laptop's would): the step still runs in C.UTF-8.
    #[test]
    fn a_step_runs_in_the_c_utf8_locale() {
        let dir = tempfile::tempdir().unwrap();
        let done = dir.path().join("steps");
        let shell = || {
            Cmd::new("sh")
                .arg("-s")
                .env("LANG", "de_DE.ISO-8859-1")
                .env("LC_ALL", "de_DE.ISO-8859-1")
                .env("LC_TIME", "de_DE.ISO-8859-1")
        };
        let seen = Mutex::new(Vec::new());
        let locale = step(
            "locale",
            "echo \"$LANG $LC_ALL\"; locale | grep LC_TIME",
            30,
        );
        run_steps(
            "node1",
            &[locale],
            &shell,
            done.to_str().unwrap(),
            &|_, l| seen.lock().unwrap().push(l.to_string()),
        )
        .unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0], "C.UTF-8 C.UTF-8", "{seen:?}");
        assert_eq!(seen[1], "LC_TIME=\"C.UTF-8\"", "{seen:?}");
    }

    #[test]
    fn a_step_that_hangs_is_killed_at_its_timeout_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let done = dir.path().join("steps");
        let shell = || Cmd::new("sh").arg("-s");
        let hang = step("hang", "echo waiting; sleep 60", 1);
        let t = Instant::now();
        let err =
            run_steps("node2", &[hang], &shell, done.to_str().unwrap(), &|_, _| {}).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
        let msg = format!("{err:#}");
        assert!(
            msg.contains("node2: provision step hang did not finish within 1 s"),
            "{msg}"
        );
        assert!(msg.contains("waiting"), "{msg}");
        assert!(!done.join("hang").exists());
    }

    #[test]
    fn a_bad_step_name_is_refused() {
        assert!(check_name("rdo-release").is_ok());
        for bad in ["", "../x", "a b", ".hidden"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
