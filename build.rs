//! Records the git revision and the build date for `ordersync --version`, `ordersync_build_info` and the
//! start-up log line.

fn main() {
    // A build without `.git` (a container's build context) is given its revision.
    let given = std::env::var("ORDERSYNC_BUILD_REVISION").ok().filter(|text| !text.trim().is_empty());
    let revision = given
        .map(|text| text.trim().to_string())
        .or_else(|| {
            std::process::Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|output| output.status.success())
                .and_then(|output| String::from_utf8(output.stdout).ok())
                .map(|text| text.trim().to_string())
                .filter(|text| !text.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=ORDERSYNC_GIT_SHA={revision}");
    // The build's date (UTC), or SOURCE_DATE_EPOCH's for reproducible builds.
    let seconds = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs()))
        .unwrap_or(0);
    println!("cargo:rustc-env=ORDERSYNC_BUILD_DATE={}", civil_date(seconds / 86_400));
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-env-changed=ORDERSYNC_BUILD_REVISION");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}

/// `YYYY-MM-DD` of the day `days` after 1970-01-01 (Howard Hinnant's civil-from-days; no dependency for a
/// build script).
fn civil_date(days: u64) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
