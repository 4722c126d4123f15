//! `ringmesh cert`: a development CA and workload/server certificates, for
//! trying mTLS locally, for the tests and for the demo. Not a production CA:
//! keys are written unencrypted, next to the certificates.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// Development certificates.
#[derive(Args, Debug)]
pub struct CertArgs {
    #[command(subcommand)]
    command: CertCommand,
}

#[derive(Subcommand, Debug)]
enum CertCommand {
    /// Create a CA: DIR/ca.pem and DIR/ca.key.
    Ca {
        /// Directory to write into (created if missing).
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "ringmesh development CA")]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: i64,
    },
    /// Issue a certificate signed by the CA: OUT.pem and OUT.key.
    ///
    /// Workload certificates carry a SPIFFE ID (--spiffe) and server
    /// certificates DNS names (--dns); one certificate may carry both. Every
    /// certificate is valid for client and server authentication, as a
    /// sidecar uses the same identity both ways.
    Issue {
        /// Directory holding ca.pem and ca.key.
        #[arg(long, default_value = "certs")]
        ca_dir: PathBuf,
        /// Output path without extension, e.g. certs/product.
        #[arg(long)]
        out: PathBuf,
        /// SPIFFE ID (URI SAN), e.g. spiffe://mesh.local/ns/shop/sa/product.
        #[arg(long)]
        spiffe: Option<String>,
        /// DNS name (repeatable), e.g. localhost.
        #[arg(long)]
        dns: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Start of validity relative to now, in days (negative: in the
        /// past; e.g. `--valid-from-days -10 --days 5` makes an expired
        /// certificate, `--valid-from-days 5` one not yet valid).
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        valid_from_days: i64,
    },
}

/// Runs `ringmesh cert ...`.
pub fn run(args: CertArgs) -> anyhow::Result<()> {
    match args.command {
        CertCommand::Ca { dir, name, days } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            validity(&mut params, 0, days)?;
            let cert = params.self_signed(&key)?;
            write(&dir.join("ca.pem"), &cert.pem())?;
            write_key(&dir.join("ca.key"), &key.serialize_pem())?;
            println!("wrote {0}/ca.pem and {0}/ca.key", dir.display());
            Ok(())
        }
        CertCommand::Issue {
            ca_dir,
            out,
            spiffe,
            dns,
            days,
            valid_from_days,
        } => {
            if spiffe.is_none() && dns.is_empty() {
                bail!("give --spiffe and/or --dns: a certificate needs an identity");
            }
            let ca_pem = read(&ca_dir.join("ca.pem"))?;
            let ca_key = KeyPair::from_pem(&read(&ca_dir.join("ca.key"))?).context("ca.key")?;
            let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).context("ca.pem")?;
            let mut params = CertificateParams::new(dns.clone())?;
            let cn = spiffe
                .clone()
                .or_else(|| dns.first().cloned())
                .unwrap_or_default();
            params.distinguished_name.push(DnType::CommonName, cn);
            if let Some(id) = &spiffe {
                if !id.starts_with("spiffe://") {
                    bail!("--spiffe must look like spiffe://<trust-domain>/<path>, got `{id}`");
                }
                params
                    .subject_alt_names
                    .push(SanType::URI(id.as_str().try_into()?));
            }
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            validity(&mut params, valid_from_days, days)?;
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &issuer)?;
            let pem = with_extension(&out, "pem");
            let key_path = with_extension(&out, "key");
            // The leaf only: peers trust the CA separately, and serving the
            // root in the chain is useless (and flagged by TLS scanners).
            write(&pem, &cert.pem())?;
            write_key(&key_path, &key.serialize_pem())?;
            println!("wrote {} and {}", pem.display(), key_path.display());
            Ok(())
        }
    }
}

fn validity(params: &mut CertificateParams, from_days: i64, days: i64) -> anyhow::Result<()> {
    if days <= 0 {
        bail!("--days must be positive");
    }
    // Backdate a little so that clocks a few minutes apart agree.
    let start = OffsetDateTime::now_utc() + Duration::days(from_days) - Duration::minutes(5);
    params.not_before = start;
    params.not_after = start + Duration::days(days);
    Ok(())
}

fn with_extension(out: &Path, ext: &str) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn write_key(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
