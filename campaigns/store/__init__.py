"""The campaign store seam (``base.Store``) and its engines, chosen by URL (``open_store``)."""
