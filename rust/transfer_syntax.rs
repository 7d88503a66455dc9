//! Transfer syntaxes the SCP accepts (PS3.5 §10, PS3.6 annex A). Storing is bit-preserving, so
//! any syntax whose data set the scanner can walk is fine: the native ones, deflate, and the
//! encapsulated families, which are Explicit VR Little Endian outside the pixel data.

pub const IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";
pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";
pub const DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1.99";
pub const EXPLICIT_VR_BIG_ENDIAN: &str = "1.2.840.10008.1.2.2";

/// Every supported transfer syntax, in our default order of preference.
pub const SUPPORTED: &[&str] = &[
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    "1.2.840.10008.1.2.1.99",  // Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",     // Explicit VR Big Endian (retired, still sent)
    "1.2.840.10008.1.2.1.98",  // Encapsulated Uncompressed Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  // JPEG Baseline
    "1.2.840.10008.1.2.4.51",  // JPEG Extended
    "1.2.840.10008.1.2.4.57",  // JPEG Lossless
    "1.2.840.10008.1.2.4.70",  // JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  // JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  // JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  // JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  // JPEG 2000
    "1.2.840.10008.1.2.4.92",  // JPEG 2000 Part 2 Lossless
    "1.2.840.10008.1.2.4.93",  // JPEG 2000 Part 2
    "1.2.840.10008.1.2.4.201", // HTJ2K Lossless
    "1.2.840.10008.1.2.4.202", // HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203", // HTJ2K
    "1.2.840.10008.1.2.4.110", // JPEG XL Lossless
    "1.2.840.10008.1.2.4.111", // JPEG XL JPEG Recompression
    "1.2.840.10008.1.2.4.112", // JPEG XL
    "1.2.840.10008.1.2.5",     // RLE Lossless
    "1.2.840.10008.1.2.4.100", // MPEG2 MP@ML
    "1.2.840.10008.1.2.4.101", // MPEG2 MP@HL
    "1.2.840.10008.1.2.4.102", // MPEG-4 AVC/H.264 HP@4.1
    "1.2.840.10008.1.2.4.103", // MPEG-4 AVC/H.264 BD-compatible HP@4.1
    "1.2.840.10008.1.2.4.104", // MPEG-4 AVC/H.264 HP@4.2 2D
    "1.2.840.10008.1.2.4.105", // MPEG-4 AVC/H.264 HP@4.2 3D
    "1.2.840.10008.1.2.4.106", // MPEG-4 AVC/H.264 Stereo HP@4.2
    "1.2.840.10008.1.2.4.107", // HEVC/H.265 Main Profile
    "1.2.840.10008.1.2.4.108", // HEVC/H.265 Main 10 Profile
];

pub fn is_supported(uid: &str) -> bool {
    SUPPORTED.contains(&uid)
}
