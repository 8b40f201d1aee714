//! Kernel command-line parameters a Linux guest needs on PVM (measured with the C probe, see
//! /work/shared/kvm-notes.md): hide the CPU features whose instructions the host emulator cannot
//! run but `KVM_SET_CPUID2` cannot mask, and cut the work the emulated kernel does at boot.

/// clearcpuid bit numbers (X86_FEATURE_* of Linux 6.1): popcnt(151) erms(297) fsrm(580)
/// smap(308) smep(295) pcid(145) invpcid(298) fsgsbase(288) sse3(128) pclmul(129) ssse3(137)
/// fma(140) sse4.1(147) sse4.2(148) movbe(150) aes(153) avx(156) f16c(157) sha_ni(317) bmi1(291)
/// bmi2(296) avx2(293) avx512f(304).
const CLEARCPUID: &str = "151,297,580,308,295,145,298,288,128,129,137,140,147,148,150,153,156,157,317,291,296,293,304";

/// Slow optional initcalls of a stock Debian 6.1 kernel under the emulator (BTF/kfunc parsing
/// ~40 s, init_kprobe_trace ~57 s, the ftrace weak-function check ~55 s, trace_eval_init ~16 s,
/// ...). Unknown names are ignored by other kernels.
const INITCALL_BLACKLIST: &str = "ptp_kvm_init,init_kprobe_trace,load_system_certificate_list,cubictcp_register,\
crypto_kdf108_init,slab_sysfs_init,ftrace_check_for_weak_functions,bpf_rstat_kfunc_init,\
init_blk_tracer,powercap_init,p2sb_fs_init,btree_module_init,init_hugetlbfs_fs,\
dynamic_debug_init_control,blake2s_mod_init,i8042_init,aa_create_aafs,dquot_init,xsk_init,\
init_graph_tracefs,iosf_mbi_init,ia32_binfmt_init,kfunc_init,bpf_key_sig_kfuncs_init,\
bpf_prog_test_run_init,bpf_tcp_ca_kfunc_init,trace_eval_init";

/// (key, value or "" for a bare flag)
const PARAMS: &[(&str, &str)] = &[
    // Features the emulator cannot run (xsave/xrstor, wrfsbase, invpcid, ...).
    ("noxsave", ""),
    ("nofsgsbase", ""),
    ("nopcid", ""),
    ("noinvpcid", ""),
    ("clearcpuid", CLEARCPUID),
    // Speed: every CPL0 instruction costs ~1 us.
    ("nokaslr", ""),
    ("tsc", "reliable"),
    ("mitigations", "off"),
    ("cryptomgr.notests", ""),
    ("rodata", "off"), // skips a ~110 s W+X page-table walk
    ("rcupdate.rcu_expedited", "1"),
    ("nowatchdog", ""), // the slow kernel would trip soft-lockup warnings
    ("initcall_blacklist", INITCALL_BLACKLIST),
];

/// Splits a command line into parameters the way the kernel does (double quotes group), up to
/// a bare `--` (what follows belongs to init).
fn user_params(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let push = |cur: &mut String, out: &mut Vec<String>| {
        if !cur.is_empty() {
            out.push(std::mem::take(cur));
        }
    };
    for ch in cmdline.chars() {
        match ch {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if cur == "--" {
                    return out;
                }
                push(&mut cur, &mut out);
            }
            c => cur.push(c),
        }
    }
    if cur != "--" {
        push(&mut cur, &mut out);
    }
    out
}

/// Parameter name as the kernel compares it: '-' and '_' are the same.
fn norm(key: &str) -> String {
    key.replace('-', "_")
}

pub fn additions(user_cmdline: &str, tsc_khz: Option<u32>) -> Vec<String> {
    let user_keys: Vec<String> =
        user_params(user_cmdline).iter().map(|p| norm(p.split_once('=').map_or(p.as_str(), |(k, _)| k))).collect();
    let has = |k: &str| user_keys.iter().any(|u| *u == norm(k));
    let mut out = Vec::new();
    for &(k, v) in PARAMS {
        if has(k) {
            continue;
        }
        out.push(if v.is_empty() { k.to_string() } else { format!("{k}={v}") });
    }
    // The true TSC rate: the kernel skips calibrating it against the PIT, which is slow and
    // inexact under the emulator. (The probe's 10x rate made timer ticks 10x rarer and booted
    // ~13% faster, but the guest clock then ran 10x slow: `sleep 1` took 10 s. Correct time wins;
    // a user who wants the trade passes tsc_early_khz= themselves.)
    if let Some(khz) = tsc_khz.filter(|&k| k > 0) {
        if !has("tsc_early_khz") {
            out.push(format!("tsc_early_khz={khz}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_everything_to_a_plain_cmdline() {
        let a = additions("console=ttyS0 reboot=k panic=-1", Some(2_596_118));
        assert!(a.contains(&"noxsave".to_string()));
        assert!(a.contains(&format!("clearcpuid={CLEARCPUID}")));
        assert!(a.contains(&"tsc=reliable".to_string()));
        assert_eq!(a.last().unwrap(), "tsc_early_khz=2596118");
        assert_eq!(a.len(), PARAMS.len() + 1);
    }

    #[test]
    fn skips_keys_the_user_set() {
        let a = additions(
            "console=ttyS0 tsc=unstable noxsave \"initcall_blacklist=a,b\" rcupdate.rcu-expedited=0 \
             clearcpuid=1 tsc_early_khz=1000 -- nokaslr",
            Some(1000),
        );
        for k in ["tsc=", "noxsave", "initcall_blacklist", "rcupdate.", "clearcpuid", "tsc_early_khz"] {
            assert!(!a.iter().any(|p| p.starts_with(k)), "{k} added: {a:?}");
        }
        // After "--" the words belong to init: nokaslr is still added.
        assert!(a.contains(&"nokaslr".to_string()));
        assert!(a.contains(&"rodata=off".to_string()));
    }

    #[test]
    fn no_tsc_rate_no_tsc_early_khz() {
        let a = additions("", None);
        assert!(!a.iter().any(|p| p.starts_with("tsc_early_khz")));
        assert!(!additions("", Some(0)).iter().any(|p| p.starts_with("tsc_early_khz")));
    }

    #[test]
    fn splitting() {
        assert_eq!(user_params(" a=1  \"b=x y\" c -- d"), vec!["a=1", "b=x y", "c"]);
        assert_eq!(user_params("a --"), vec!["a"]);
    }
}
