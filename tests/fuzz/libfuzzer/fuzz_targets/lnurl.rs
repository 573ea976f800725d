#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fedai_fuzz::lnurl_answer(data));
