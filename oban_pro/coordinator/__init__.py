"""The per-node coordinator: everything the parent asyncio process runs (design.md "Picture")."""
