"""The records core: what the streaming domain lands and every other domain reads (docs/contracts.md).

It stands below every domain and imports none of them: the landing record (`record.py`), the names
of its files (`keys.py`), the one reader (`reader.py`), the days whose landing was retired
(`retired.py`), compacted files (`spans.py`), the range ledger (`ledger.py`), the hook that acts on a
range as it lands (`listeners.py`) and the detect_frames runs in flight (`runs.py`). Streaming writes
records; the other domains read them here, never through streaming.
"""
