//! Generates bindings to the system DPDK when the `dpdk` feature is on; does nothing otherwise.
//!
//! DPDK is found with the `pkg-config` program (not the pkg-config crate, which drops the
//! `-include rte_config.h` that DPDK's headers need). Static-inline fast-path functions
//! (`rte_eth_rx_burst`, `rte_pktmbuf_alloc`, …) are exported through bindgen's
//! `wrap_static_fns`, compiled together with `shim.c` into a small static library.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=shim.h");
    println!("cargo:rerun-if-changed=shim.c");
    #[cfg(feature = "dpdk")]
    dpdk::generate();
}

#[cfg(feature = "dpdk")]
mod dpdk {
    use std::path::PathBuf;
    use std::process::Command;

    /// Oldest DPDK release whose API these bindings are written against.
    const MIN_VERSION: (u32, u32) = (22, 11);

    const MISSING: &str = "voxedge-dpdk-sys: the `dpdk` feature needs the DPDK development \
        files, found with `pkg-config libdpdk`. Install them with \
        `apt-get install libdpdk-dev pkg-config libclang-dev` (Debian 12 / Ubuntu 22.04 and \
        later), or build without `--features dpdk`.";

    fn pkg_config(args: &[&str]) -> String {
        println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
        let out = match Command::new("pkg-config")
            .args(args)
            .arg("libdpdk")
            .output()
        {
            Ok(o) => o,
            Err(e) => panic!("{MISSING}\n(running `pkg-config` failed: {e}; package `pkg-config`)"),
        };
        if !out.status.success() {
            panic!(
                "{MISSING}\n(pkg-config said: {})",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn check_version() {
        let v = pkg_config(&["--modversion"]);
        let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let major = parts.next().unwrap_or(0);
        let minor = parts.next().unwrap_or(0);
        if (major, minor) < MIN_VERSION {
            panic!(
                "voxedge-dpdk-sys: libdpdk {v} is too old; {}.{} or later is needed \
                 (libdpdk-dev from Debian 12 is 22.11)",
                MIN_VERSION.0, MIN_VERSION.1
            );
        }
        println!("cargo:rustc-env=VOXEDGE_DPDK_VERSION={v}");
    }

    pub fn generate() {
        check_version();
        let cflags: Vec<String> = pkg_config(&["--cflags"])
            .split_whitespace()
            .map(str::to_string)
            .collect();
        for flag in pkg_config(&["--libs"]).split_whitespace() {
            if let Some(lib) = flag.strip_prefix("-l") {
                println!("cargo:rustc-link-lib=dylib={lib}");
            } else if let Some(dir) = flag.strip_prefix("-L") {
                println!("cargo:rustc-link-search=native={dir}");
            }
        }
        // The ring PMD's constructor API (rte_eth_from_rings) is used for in-process test
        // wires; PMDs are otherwise loaded by the EAL as plugins, so nothing else is linked.
        println!("cargo:rustc-link-lib=dylib=rte_net_ring");
        println!("cargo:rustc-link-lib=dylib=rte_bus_vdev");

        let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
        let wrapper = manifest.join("wrapper.h");
        let extern_c = out.join("static_fns");

        let bindings = bindgen::Builder::default()
            .header(wrapper.to_string_lossy())
            .clang_args(&cflags)
            .clang_arg(format!("-I{}", manifest.display()))
            .allowlist_function("rte_.*")
            .allowlist_function("voxedge_.*")
            .allowlist_type("rte_.*")
            .allowlist_var("RTE_.*")
            .allowlist_var("RING_F_.*")
            // Fast-path static inline functions become real symbols through generated C.
            .wrap_static_fns(true)
            .wrap_static_fns_path(&extern_c)
            .derive_default(true)
            .derive_debug(false)
            .layout_tests(false)
            .generate_comments(false)
            .prepend_enum_name(false)
            .default_enum_style(bindgen::EnumVariation::Consts)
            // Packed and aligned structs that Rust cannot represent are kept opaque.
            .opaque_type("rte_arp_ipv4")
            .opaque_type("rte_arp_hdr")
            .opaque_type("rte_l2tpv2_combined_msg_hdr")
            .opaque_type("rte_gtp_psc_.*")
            .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
            .generate()
            .unwrap_or_else(|e| {
                panic!("voxedge-dpdk-sys: bindgen failed on DPDK's headers: {e}. {MISSING}")
            });
        bindings
            .write_to_file(out.join("bindings.rs"))
            .expect("write bindings.rs");

        let mut build = cc::Build::new();
        build
            .file(extern_c.with_extension("c"))
            .file(manifest.join("shim.c"))
            .include(&manifest)
            .warnings(false)
            .opt_level(3);
        for f in &cflags {
            build.flag(f);
        }
        build.compile("voxedge_dpdk_shim");
    }
}
