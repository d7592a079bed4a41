"""Generated, language-native SDKs that let sandboxed programs call upstream tools."""
