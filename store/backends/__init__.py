"""phonevault.store.backends"""
