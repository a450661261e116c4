"""Pure renderers: spec in, text or argv out. Nothing here touches the file system."""
