"""The slide adapter: reading whole-slide images with OpenSlide."""
