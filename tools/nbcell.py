"""Edit notebook cells from the shell, by cell id (what nbdev writes as `#| export` cell markers in the modules).

    python tools/nbcell.py list   NB                      # index, id, type, first line of every cell
    python tools/nbcell.py show   NB ID                   # print one cell's source
    python tools/nbcell.py set    NB ID FILE|-            # replace a cell's source (FILE, or '-' for stdin)
    python tools/nbcell.py insert NB AFTER_ID TYPE FILE|- # new cell (TYPE code|markdown) after AFTER_ID ('^' = first); prints its id
    python tools/nbcell.py delete NB ID

Writes atomically and keeps nbdev's format (outputs stay empty; run `make lib` afterwards)."""
import json, os, sys, tempfile, uuid
from pathlib import Path

def _load(nb): return json.loads(Path(nb).read_text(encoding='utf-8'))

def _save(nb, data):
    fd, tmp = tempfile.mkstemp(dir=Path(nb).parent, suffix='.tmp')
    with os.fdopen(fd, 'w', encoding='utf-8') as f: f.write(json.dumps(data, indent=1, ensure_ascii=False) + '\n')
    os.replace(tmp, nb)

def _find(data, cid):
    for i, c in enumerate(data['cells']):
        if c.get('id') == cid: return i
    raise SystemExit(f"no cell with id {cid!r}; `list` shows the ids")

def _source(arg): return sys.stdin.read() if arg == '-' else Path(arg).read_text(encoding='utf-8')

def _lines(text): return text.splitlines(keepends=True) if text else []

def main(cmd, nb, *args):
    data = _load(nb)
    if cmd == 'list':
        for i, c in enumerate(data['cells']):
            first = ''.join(c['source']).split('\n', 1)[0][:90]
            print(f"{i:3} {c.get('id')} {c['cell_type'][:4]:4} {first}")
    elif cmd == 'show': print(''.join(data['cells'][_find(data, args[0])]['source']))
    elif cmd == 'set':
        data['cells'][_find(data, args[0])]['source'] = _lines(_source(args[1]).rstrip('\n')); _save(nb, data)
    elif cmd == 'insert':
        after, kind, src = args
        cell = {'cell_type': kind, 'id': uuid.uuid4().hex[:8], 'metadata': {}, 'source': _lines(_source(src).rstrip('\n'))}
        if kind == 'code': cell.update(execution_count=None, outputs=[])
        at = 0 if after == '^' else _find(data, after) + 1
        data['cells'].insert(at, cell); _save(nb, data); print(cell['id'])
    elif cmd == 'delete': del data['cells'][_find(data, args[0])]; _save(nb, data)
    else: raise SystemExit(__doc__)

if __name__ == '__main__':
    if len(sys.argv) < 3: raise SystemExit(__doc__)
    main(*sys.argv[1:])
