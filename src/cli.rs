//! Command-line types only: parsing lives here, behaviour elsewhere.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "lab",
    version,
    about = "A nested-virtualisation demo lab on your laptop",
    long_about = "lab checks that a laptop can run a nested-virtualisation lab, builds base \
                  images from kickstart files, clones them per VM in milliseconds and boots \
                  whole demo labs on an isolated libvirt network."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// libvirt connection URI
    #[arg(
        long,
        global = true,
        env = "LAB_CONNECT",
        default_value = "qemu:///system",
        value_name = "URI"
    )]
    pub connect: String,
    /// Print data as one JSON document on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// Say more: every external command line (-v), more detail (-vv)
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Say only what failed
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// When to colour human output
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, value_name = "WHEN")]
    pub color: ColorChoice,
    /// Fail at once (exit status 4), naming the holder, when another lab command holds a
    /// lock this one needs, instead of waiting for it
    #[arg(
        long,
        global = true,
        env = "LAB_NO_WAIT",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub no_wait: bool,
}

impl GlobalArgs {
    /// Whether a command waits for the locks it needs.
    pub fn wait(&self) -> crate::lock::Wait {
        crate::lock::Wait::from_no_wait(self.no_wait)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Is this laptop fit for a nested lab, and what to fix if not
    Check(CheckArgs),
    /// Plan a lab, and bring it up (with --dry-run: print the plan, touch nothing)
    Up(UpArgs),
    /// What lab owns: per profile, its VMs, addresses, state and disk use
    Status(StatusArgs),
    /// Put VMs back to the `provisioned` snapshot, or (without one, or with --pristine) to a
    /// fresh clone of the base
    Reset(ResetArgs),
    /// Save VMs' memory to disk and stop them; lab start resumes them where they were
    Stop(StopArgs),
    /// Start a lab's network and VMs again, resuming the ones lab stop saved
    Start(StartArgs),
    /// One consistent point of the whole lab, memory and disks (--list, --rm)
    Snapshot(SnapshotArgs),
    /// Every VM back to a snapshot's point and running, processes and all
    Restore(RestoreArgs),
    /// Remove what lab made for a profile, and nothing else
    Down(DownArgs),
    /// Log in to a lab VM over SSH, or run one command in it
    Ssh(SshArgs),
    /// A VM's serial console, interactive (leave with Ctrl+]), for when its network is cut
    Console(ConsoleArgs),
    /// Is the lab ready to show: SSH, nested KVM in the VMs, provisioning, endpoints
    Ready(ReadyArgs),
    /// Give the space guests freed back to the host: fstrim through the guest agent in
    /// running VMs, offline for stopped ones; says how much came back
    Trim(TrimArgs),
    /// List the profiles lab can find, and where each comes from
    Profiles,
    /// The LVM thin pool a profile names
    Pool(PoolArgs),
    /// Base images: render a profile's kickstart, build, list and remove bases
    Base(BaseArgs),
    /// The image cache, shared by all profiles: the cloud images lab downloaded
    Cache(CacheArgs),
    /// Print a shell completion script
    Completions {
        /// The shell to complete for
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write lab's manual pages: lab.1 and one page per command (lab-up.1, ...)
    #[command(hide = true)]
    Man {
        /// Write the pages into DIR (without it: print lab.1 on stdout)
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Check resources, storage and subnet against this profile (a name or a path)
    #[arg(long, value_name = "PROFILE")]
    pub profile: Option<String>,
    /// The storage the lab lives on: a directory or a block device
    #[arg(long, value_name = "PATH")]
    pub storage: Option<PathBuf>,
    /// Read every file-based host fact under DIR instead of /
    #[arg(long, value_name = "DIR")]
    pub sysroot: Option<PathBuf>,
    /// Apply the fixes lab knows how to make (nested KVM option, LVM issue_discards)
    #[arg(long)]
    pub fix: bool,
    /// Skip the storage throughput probe (about 3 seconds)
    #[arg(long)]
    pub no_throughput: bool,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// The profile: a name (searched) or a path to a .toml file
    pub profile: String,
    /// Print the plan and touch nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Read file-based host facts under DIR instead of / (KVM is then judged from files)
    #[arg(long, value_name = "DIR")]
    pub sysroot: Option<PathBuf>,
    /// Seconds each VM may take from start to ready
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub timeout: u64,
    /// Bring the VMs up, but run none of the profile's provisioning steps
    #[arg(long)]
    pub no_provision: bool,
}

#[derive(Debug, Args)]
pub struct SshArgs {
    /// The profile: a name or a path
    pub profile: String,
    /// The VM
    pub vm: String,
    /// A command to run instead of an interactive shell (after --)
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ReadyArgs {
    /// The profile: a name or a path
    pub profile: String,
    /// Seconds each probe (SSH, an endpoint) may take
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this profile (a name); all of lab's labs when omitted
    pub profile: Option<String>,
}

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// The profile: a name or a path
    pub profile: String,
    /// The VM
    pub vm: String,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// The profile: a name or a path
    pub profile: String,
    /// The VMs to stop (all of the profile's when omitted)
    pub vms: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// The profile: a name or a path
    pub profile: String,
    /// The VMs to start (all of the profile's when omitted)
    pub vms: Vec<String>,
    /// Seconds each VM may take from start to ready
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    /// The profile: a name or a path
    pub profile: String,
    /// The VMs to reset (all of the profile's when omitted)
    pub vms: Vec<String>,
    /// Seconds each VM may take from start to ready
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub timeout: u64,
    /// Print the plan and touch nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Back to a fresh clone of the base even when a `provisioned` snapshot exists; the
    /// lab's snapshots are removed
    #[arg(long)]
    pub pristine: bool,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// The profile: a name or a path
    pub profile: String,
    /// The snapshot's name: a plain word
    #[arg(required_unless_present = "list", conflicts_with = "list")]
    pub name: Option<String>,
    /// List the profile's snapshots: name, when taken, size on disk
    #[arg(long)]
    pub list: bool,
    /// Remove the snapshot (its layers merged into the disks backed by them first)
    #[arg(long)]
    pub rm: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The profile: a name or a path
    pub profile: String,
    /// The snapshot
    pub name: String,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// The profile: a name or a path
    pub profile: String,
    /// Remove the base image (and boot files) too
    #[arg(long)]
    pub purge: bool,
    /// Print what would be removed and touch nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct PoolArgs {
    #[command(subcommand)]
    pub command: PoolCommand,
}

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Create the thin pool of the profile's [storage] vg and pool, discards passdown
    Create {
        /// The profile: a name or a path
        profile: String,
        /// Size of the pool's data, e.g. "200G"
        #[arg(long)]
        size: crate::size::ByteSize,
    },
}

#[derive(Debug, Args)]
pub struct BaseArgs {
    #[command(subcommand)]
    pub command: BaseCommand,
}

#[derive(Debug, Subcommand)]
pub enum BaseCommand {
    /// Print the profile's rendered kickstart
    Kickstart {
        /// The profile: a name or a path
        profile: String,
        /// Also run pykickstart's ksvalidator on it for the profile's OS version
        #[arg(long)]
        validate: bool,
    },
    /// Build the profile's base (when it is missing or out of date) and seal it
    Build {
        /// The profile: a name or a path
        profile: String,
        /// Build again even when the base is current
        #[arg(long)]
        force: bool,
        /// Seconds the installer may run before the build is given up
        #[arg(long, value_name = "SECS", default_value_t = 7200)]
        timeout: u64,
    },
    /// List lab's bases: what each was built from, whether it is current
    List {
        /// Only the base of this profile
        profile: Option<String>,
    },
    /// Remove a profile's base (refused while clones of it exist: `lab down` them first)
    Rm {
        /// The profile: a name or a path
        profile: String,
    },
}

#[derive(Debug, Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub command: CacheCommand,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List the cached images: file, where each came from, checksum, size, when fetched
    /// and last used
    List,
    /// Remove cached images (bases made from them are copies and stay); a later `lab up`
    /// downloads an image again when it needs it
    Rm {
        /// An image: its file name as published, its file in the cache, or its checksum
        /// (or the first 8 or more hex digits of it)
        #[arg(
            required_unless_present = "all",
            conflicts_with = "all",
            value_name = "NAME"
        )]
        names: Vec<String>,
        /// Every cached image, and what unfinished downloads left
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Args)]
pub struct TrimArgs {
    /// The profile: a name or a path
    pub profile: String,
    /// The VMs to trim (all of the profile's, and its base, when omitted)
    pub vms: Vec<String>,
    /// Shut down a running VM whose guest agent does not answer, trim it offline, and
    /// start it again
    #[arg(long)]
    pub stop: bool,
    /// Seconds a VM shut down by --stop may take before it is powered off
    #[arg(long, value_name = "SECS", default_value_t = 60, requires = "stop")]
    pub shutdown_timeout: u64,
}
