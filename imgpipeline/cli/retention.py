"""`imgpipeline retention run | rules`: the retention job's work from the command line, and the S3
lifecycle rules for operators who would rather have the bucket expire objects itself."""

from __future__ import annotations

import json
import sys
from datetime import date


def retention(args) -> int:
    from imgpipeline.defs.retention.sweep import (
        DataRetention,
        lifecycle_rules,
        plural,
        record_key,
        sweep,
        totals,
    )
    from imgpipeline.resources import KafkaResource, StorageResource

    settings = DataRetention.from_env()
    storage = StorageResource.from_env()
    if args.what == "rules":
        rules, notes = lifecycle_rules(settings, storage.location.prefix)
        print(json.dumps(rules, indent=2))
        for note in notes:
            print(f"not in the rules: {note}", file=sys.stderr)
        return 0
    store = storage.open()
    kafka = None if args.dry_run else KafkaResource.from_env()
    record = sweep(store, settings, dry_run=args.dry_run,
                   keep_dead_letters=kafka.keep_dead_letters if kafka else None)
    deleted = totals(record)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {plural(sum(deleted.values()), 'object')}: "
          + (", ".join(f"{kind} {n}" for kind, n in deleted.items()) or "nothing past its keeping time"))
    if not args.dry_run:
        print(f"recorded in {store.uri(record_key(date.fromisoformat(record['day'])))}")
    return 0
