//! The real NSM, through `/dev/nsm` and the AWS NSM API.

use aws_nitro_enclaves_nsm_api::api::{ErrorCode, Request, Response};
use aws_nitro_enclaves_nsm_api::driver;
use serde_bytes::ByteBuf;

use super::{check_fields, Nsm, NsmError};

/// An open `/dev/nsm`.
pub struct DeviceNsm {
    fd: i32,
}

impl DeviceNsm {
    /// Opens `/dev/nsm`; fails when the `nsm` module is not loaded (or this is no enclave).
    pub fn open() -> Result<DeviceNsm, NsmError> {
        let fd = driver::nsm_init();
        if fd < 0 {
            return Err(NsmError::Unavailable(
                "opening /dev/nsm failed (is the nsm module loaded?)".into(),
            ));
        }
        Ok(DeviceNsm { fd })
    }

    fn call(&self, req: Request) -> Result<Response, NsmError> {
        match driver::nsm_process_request(self.fd, req) {
            Response::Error(code) => Err(map_error(code)),
            r => Ok(r),
        }
    }
}

impl Drop for DeviceNsm {
    fn drop(&mut self) {
        driver::nsm_exit(self.fd);
    }
}

fn map_error(code: ErrorCode) -> NsmError {
    NsmError::Device(format!("{code:?}"))
}

fn unexpected(r: Response) -> NsmError {
    NsmError::Device(format!("an unexpected response: {r:?}"))
}

impl Nsm for DeviceNsm {
    fn describe_pcr(&self, index: u16) -> Result<(bool, Vec<u8>), NsmError> {
        match self.call(Request::DescribePCR { index })? {
            Response::DescribePCR { lock, data } => Ok((lock, data)),
            r => Err(unexpected(r)),
        }
    }

    fn extend_pcr(&self, index: u16, data: &[u8]) -> Result<Vec<u8>, NsmError> {
        super::check_extend(data)?;
        match self.call(Request::ExtendPCR {
            index,
            data: data.to_vec(),
        }) {
            Ok(Response::ExtendPCR { data }) => Ok(data),
            Ok(r) => Err(unexpected(r)),
            Err(NsmError::Device(c)) if c == "ReadOnlyIndex" => Err(NsmError::ReadOnlyIndex(index)),
            Err(NsmError::Device(c)) if c == "InvalidIndex" => Err(NsmError::InvalidIndex(index)),
            Err(e) => Err(e),
        }
    }

    fn lock_pcr(&self, index: u16) -> Result<(), NsmError> {
        match self.call(Request::LockPCR { index })? {
            Response::LockPCR => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    fn lock_pcrs(&self, range: u16) -> Result<(), NsmError> {
        match self.call(Request::LockPCRs { range })? {
            Response::LockPCRs => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    fn attestation(
        &self,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>, NsmError> {
        check_fields(user_data, nonce, public_key)?;
        let b = |v: Option<&[u8]>| v.map(|v| ByteBuf::from(v.to_vec()));
        match self.call(Request::Attestation {
            user_data: b(user_data),
            nonce: b(nonce),
            public_key: b(public_key),
        })? {
            Response::Attestation { document } => Ok(document),
            r => Err(unexpected(r)),
        }
    }

    fn get_random(&self) -> Result<Vec<u8>, NsmError> {
        match self.call(Request::GetRandom)? {
            Response::GetRandom { random } => Ok(random),
            r => Err(unexpected(r)),
        }
    }
}
