/* The one macOS SDK header ring's C code includes, for `cargo check` of the
   x86_64-apple-darwin target on Linux (no SDK here): macOS, not iOS. */
#define TARGET_OS_MAC 1
#define TARGET_OS_OSX 1
#define TARGET_OS_IPHONE 0
