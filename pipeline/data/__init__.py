"""Dataset sources (registry), the member / non-member split and image decoding."""
