//! CPU topology and the pinning plan: which CPUs the process may run on, which physical core
//! each belongs to (sysfs), where each worker and the sink thread run, and pinning the calling
//! thread.
//!
//! May depend on: nothing of the crate (a leaf): std, libc (`sched_*affinity`), tracing.
//!
//! Invariant: planning is a pure function of its inputs ([`plan_cpus`]); only
//! [`pin_current_thread`], [`allowed_cpus`] and [`Topology::read`] touch the system, and a
//! failure there leaves a thread floating (logged), never stops the proxy.

/// Pins the calling thread to one CPU (best effort; logs on failure).
pub fn pin_current_thread(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET bounds-checks against CPU_SETSIZE below.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::warn!(cpu, error = %std::io::Error::last_os_error(), "cannot pin thread");
        }
    }
}

/// CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills a zeroed cpu_set_t we own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            let v: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
                .filter(|c| libc::CPU_ISSET(*c, &set))
                .collect();
            if !v.is_empty() {
                return v;
            }
        }
    }
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0..n).collect()
}

/// Where sysfs describes each CPU (`cpuN/topology/{physical_package_id,core_id}`).
pub const SYS_CPU_DIR: &str = "/sys/devices/system/cpu";

/// Which physical core (and package) each CPU belongs to: CPUs sharing a core are SMT
/// siblings (on EC2, the two vCPUs of one core). A CPU sysfs says nothing about counts as a
/// core of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// `(cpu, (package, core))`, sorted by CPU.
    cores: Vec<(usize, (usize, usize))>,
}

impl Topology {
    /// Reads the package and core ids of `cpus` under `sys_cpu_dir` (normally
    /// [`SYS_CPU_DIR`]); unreadable or malformed files leave that CPU unknown.
    pub fn read(sys_cpu_dir: &std::path::Path, cpus: &[usize]) -> Topology {
        let id = |cpu: usize, file: &str| -> Option<usize> {
            let path = sys_cpu_dir.join(format!("cpu{cpu}/topology/{file}"));
            std::fs::read_to_string(path).ok()?.trim().parse().ok()
        };
        let mut cores: Vec<(usize, (usize, usize))> = cpus
            .iter()
            .filter_map(|&c| Some((c, (id(c, "physical_package_id")?, id(c, "core_id")?))))
            .collect();
        cores.sort_unstable();
        cores.dedup_by_key(|(c, _)| *c);
        Topology { cores }
    }

    /// A topology from known `(cpu, (package, core))` places.
    #[cfg(test)]
    pub fn from_places(places: &[(usize, (usize, usize))]) -> Topology {
        let mut cores = places.to_vec();
        cores.sort_unstable();
        cores.dedup_by_key(|(c, _)| *c);
        Topology { cores }
    }

    /// The physical core of `cpu`; an unknown CPU is its own core (a key no real core has).
    pub fn core_of(&self, cpu: usize) -> (usize, usize) {
        match self.cores.binary_search_by_key(&cpu, |(c, _)| *c) {
            Ok(i) => self.cores.get(i).map_or((usize::MAX, cpu), |(_, k)| *k),
            Err(_) => (usize::MAX, cpu),
        }
    }

    /// How many distinct physical cores `cpus` span.
    pub fn count_cores(&self, cpus: &[usize]) -> usize {
        let mut keys: Vec<(usize, (usize, usize))> =
            cpus.iter().map(|c| (0, self.core_of(*c))).collect();
        keys.sort_unstable();
        keys.dedup();
        keys.len()
    }
}

/// Which CPU each worker runs on, and where the sink (Kafka producer) thread goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuPlan {
    pub workers: Vec<Option<usize>>,
    pub sink: Option<usize>,
}

/// Plans CPUs. By default (`--numThreads 0`, no `--cpu-list`) one worker per allowed CPU;
/// with `--cpu-list` the workers (one per listed CPU, or `--numThreads` of them) are pinned
/// round-robin over the list. When workers are pinned, the sink thread takes a spare allowed
/// CPU if there is one — preferring a physical core no worker runs on over an SMT sibling of a
/// busy core, then the lowest number — and otherwise floats. An explicit `--numThreads N`
/// without a CPU list leaves placement to the kernel.
pub fn plan_cpus(
    num_threads: usize,
    cpu_list: Option<&[usize]>,
    allowed: &[usize],
    topology: &Topology,
) -> CpuPlan {
    let pin_list: Option<Vec<usize>> = match cpu_list {
        Some(l) if !l.is_empty() => Some(l.to_vec()),
        _ if num_threads == 0 => Some(allowed.to_vec()),
        _ => None,
    };
    let n = if num_threads == 0 {
        pin_list.as_ref().map_or(1, |l| l.len().max(1))
    } else {
        num_threads
    };
    match pin_list {
        Some(list) if !list.is_empty() => {
            let workers: Vec<Option<usize>> =
                (0..n).map(|i| list.get(i % list.len()).copied()).collect();
            let used: Vec<usize> = workers.iter().flatten().copied().collect();
            let busy_core = |cpu: usize| {
                let core = topology.core_of(cpu);
                used.iter().any(|w| topology.core_of(*w) == core)
            };
            let sink = allowed
                .iter()
                .copied()
                .filter(|c| !used.contains(c))
                .min_by_key(|c| (busy_core(*c), *c));
            CpuPlan { workers, sink }
        }
        _ => CpuPlan {
            workers: vec![None; n],
            sink: None,
        },
    }
}

impl CpuPlan {
    /// CPUs the plan pins a worker to that the process may not run on (pinning them fails;
    /// those workers float).
    pub fn outside(&self, allowed: &[usize]) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .workers
            .iter()
            .flatten()
            .copied()
            .filter(|c| !allowed.contains(c))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// One line for the start-up log: where the workers and the sink thread run, and the
    /// allowed CPUs with their physical cores.
    pub fn describe(&self, allowed: &[usize], topology: &Topology) -> String {
        let n = self.workers.len();
        let mut pinned: Vec<usize> = self.workers.iter().flatten().copied().collect();
        pinned.sort_unstable();
        pinned.dedup();
        let workers = if pinned.is_empty() {
            format!("{n} worker(s) unpinned")
        } else if pinned.len() < n {
            format!(
                "{n} workers pinned round-robin to CPUs {} ({} physical cores)",
                cpu_ranges(&pinned),
                topology.count_cores(&pinned)
            )
        } else {
            format!(
                "{n} worker(s) pinned one per CPU to CPUs {} ({} physical cores)",
                cpu_ranges(&pinned),
                topology.count_cores(&pinned)
            )
        };
        let sink = match self.sink {
            Some(c) => {
                let core = topology.core_of(c);
                if pinned.iter().any(|w| topology.core_of(*w) == core) {
                    format!("sink thread on spare CPU {c} (SMT sibling of a worker's CPU)")
                } else {
                    format!("sink thread on spare CPU {c} (a core no worker uses)")
                }
            }
            None if pinned.is_empty() => "sink thread unpinned".to_string(),
            None => "sink thread unpinned (no spare allowed CPU)".to_string(),
        };
        let cores = topology.count_cores(allowed);
        format!(
            "{workers}; {sink}; allowed CPUs {} = {cores} physical cores ({} per core)",
            cpu_ranges(allowed),
            if cores > 0 && allowed.len() > cores {
                format!("{} threads", allowed.len().div_ceil(cores))
            } else {
                "1 thread".to_string()
            }
        )
    }
}

/// `0-3,5`-style list of `cpus` (sorted and deduplicated first).
pub fn cpu_ranges(cpus: &[usize]) -> String {
    let mut v = cpus.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut out = String::new();
    let mut i = 0;
    while let Some(&lo) = v.get(i) {
        let mut hi = lo;
        while v.get(i + 1) == Some(&(hi + 1)) {
            hi += 1;
            i += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if hi == lo {
            out.push_str(&lo.to_string());
        } else {
            out.push_str(&format!("{lo}-{hi}"));
        }
        i += 1;
    }
    if out.is_empty() {
        out.push_str("none");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_plan_one_per_cpu_with_spare_for_sink() {
        let flat = Topology::default();
        let p = plan_cpus(0, Some(&[1]), &[0, 1], &flat);
        assert_eq!(p.workers, vec![Some(1)]);
        assert_eq!(p.sink, Some(0));
        let p = plan_cpus(0, None, &[0, 1], &flat);
        assert_eq!(p.workers, vec![Some(0), Some(1)]);
        assert_eq!(p.sink, None);
        let p = plan_cpus(3, None, &[0, 1], &flat);
        assert_eq!(p.workers, vec![None, None, None]);
        assert_eq!(p.sink, None);
        let p = plan_cpus(3, Some(&[2, 3]), &[0, 1, 2, 3], &flat);
        assert_eq!(p.workers, vec![Some(2), Some(3), Some(2)]);
        assert_eq!(p.sink, Some(0));
    }

    /// EC2 numbering: vCPU n and n + cores/2... share a core (c6i.2xlarge: 0/4, 1/5, 2/6, 3/7).
    fn ec2_8_vcpus() -> Topology {
        Topology::from_places(&(0..8).map(|c| (c, (0, c % 4))).collect::<Vec<_>>())
    }

    #[test]
    fn cpu_plan_prefers_a_core_no_worker_uses_for_the_sink() {
        let all: Vec<usize> = (0..8).collect();
        // Adjacent siblings (0/1, 2/3, ...): after workers on 1 and 2, CPU 0 and 3 are
        // siblings of busy cores; 4 is a whole idle core.
        let adjacent = Topology::from_places(&(0..8).map(|c| (c, (0, c / 2))).collect::<Vec<_>>());
        let p = plan_cpus(0, Some(&[1, 2]), &all, &adjacent);
        assert_eq!(p.sink, Some(4));
        // Without topology the lowest spare CPU wins.
        assert_eq!(
            plan_cpus(0, Some(&[1, 2]), &all, &Topology::default()).sink,
            Some(0)
        );
        // EC2: workers on cores 1-3 (both threads): core 0 (CPUs 0, 4) is left for the sink
        // and the NIC interrupts.
        let p = plan_cpus(0, Some(&[1, 2, 3, 5, 6, 7]), &all, &ec2_8_vcpus());
        assert_eq!(p.workers.len(), 6);
        assert_eq!(p.sink, Some(0));
        // Only siblings of busy cores are spare: take the lowest.
        let p = plan_cpus(0, Some(&[0, 1, 2, 3]), &all, &ec2_8_vcpus());
        assert_eq!(p.sink, Some(4));
        // The sink only goes where the process may run.
        let p = plan_cpus(0, Some(&[1, 2, 3]), &[1, 2, 3, 6], &ec2_8_vcpus());
        assert_eq!(p.sink, Some(6));
        assert!(p.outside(&[1, 2, 3, 6]).is_empty());
        assert_eq!(
            plan_cpus(0, Some(&[9]), &[0, 1], &ec2_8_vcpus()).outside(&[0, 1]),
            vec![9]
        );
    }

    #[test]
    fn describe_names_workers_sink_and_cores() {
        let all: Vec<usize> = (0..8).collect();
        let t = ec2_8_vcpus();
        let d = plan_cpus(0, Some(&[1, 2, 3, 5, 6, 7]), &all, &t).describe(&all, &t);
        assert_eq!(
            d,
            "6 worker(s) pinned one per CPU to CPUs 1-3,5-7 (3 physical cores); \
             sink thread on spare CPU 0 (a core no worker uses); \
             allowed CPUs 0-7 = 4 physical cores (2 threads per core)"
        );
        let d = plan_cpus(0, None, &all, &t).describe(&all, &t);
        assert!(
            d.contains("sink thread unpinned (no spare allowed CPU)"),
            "{d}"
        );
        let d = plan_cpus(0, Some(&[0, 1, 2, 3]), &all, &t).describe(&all, &t);
        assert!(
            d.contains("spare CPU 4 (SMT sibling of a worker's CPU)"),
            "{d}"
        );
        let d = plan_cpus(2, None, &[0], &Topology::default()).describe(&[0], &Topology::default());
        assert_eq!(
            d,
            "2 worker(s) unpinned; sink thread unpinned; allowed CPUs 0 = 1 physical cores (1 thread per core)"
        );
        let d = plan_cpus(3, Some(&[5]), &[5], &t).describe(&[5], &t);
        assert!(
            d.starts_with("3 workers pinned round-robin to CPUs 5 "),
            "{d}"
        );
    }

    #[test]
    fn cpu_ranges_compacts() {
        assert_eq!(cpu_ranges(&[5, 0, 1, 2, 3, 7, 8]), "0-3,5,7-8");
        assert_eq!(cpu_ranges(&[4]), "4");
        assert_eq!(cpu_ranges(&[]), "none");
    }

    #[test]
    fn topology_from_sysfs_files() {
        let dir = tempfile::tempdir().unwrap();
        let put = |cpu: usize, file: &str, v: &str| {
            let d = dir.path().join(format!("cpu{cpu}/topology"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(file), v).unwrap();
        };
        for (cpu, core) in [(0, 0), (1, 1), (2, 0), (3, 1)] {
            put(cpu, "physical_package_id", "0\n");
            put(cpu, "core_id", &format!("{core}\n"));
        }
        put(4, "physical_package_id", "0\n");
        put(4, "core_id", "garbage\n");
        let t = Topology::read(dir.path(), &[3, 2, 1, 0, 4, 5]);
        assert_eq!(t.core_of(0), t.core_of(2));
        assert_eq!(t.core_of(1), t.core_of(3));
        assert_ne!(t.core_of(0), t.core_of(1));
        // Unknown CPUs (malformed, missing) are cores of their own.
        assert_ne!(t.core_of(4), t.core_of(5));
        assert_eq!(t.count_cores(&[0, 1, 2, 3, 4, 5]), 4);
        // This machine's own topology reads without error and covers its CPUs.
        let allowed = allowed_cpus();
        let here = Topology::read(std::path::Path::new(SYS_CPU_DIR), &allowed);
        assert!(here.count_cores(&allowed) >= 1);
    }
}
