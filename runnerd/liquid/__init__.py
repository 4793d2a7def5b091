"""Task Liquid: the renderer, the tags runnerd adds and Mechanic's filters."""
