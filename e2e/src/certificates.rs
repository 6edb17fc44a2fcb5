//! A CA made at run time and a server certificate it signed, for tests of TLS.

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use crate::{HarnessError, Result};

/// A CA's certificate (PEM) and a certificate it signed, with the certificate's key.
pub struct Signed {
    pub ca_pem: String,
    pub certificate: rcgen::Certificate,
    pub key: KeyPair,
}

/// A new CA, and a certificate it signed for `names` (DNS names or IP addresses).
pub fn signed_by_a_new_ca(names: &[&str]) -> Result<Signed> {
    let failed = HarnessError::context("making test certificates");
    let make = || -> std::result::Result<Signed, rcgen::Error> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate()?;
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let certificate = CertificateParams::new(names)?.signed_by(&key, &issuer)?;
        Ok(Signed {
            ca_pem: ca.pem(),
            certificate,
            key,
        })
    };
    make().map_err(failed)
}
