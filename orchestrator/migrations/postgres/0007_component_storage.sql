-- Components are streamed to workers a chunk at a time with `substring`:
-- stored uncompressed out of line, each chunk reads only its own pages
-- (compressed, every chunk would decompress the whole component).
ALTER TABLE plugin_components ALTER COLUMN bytes SET STORAGE EXTERNAL;
