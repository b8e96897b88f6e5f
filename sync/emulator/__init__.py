"""phonevault.sync.emulator"""
