"""Classic nbdev 2 setup: every setting is read from settings.ini.

The repository's `data/` and the experiment notebooks `nbs/experiments/` are copied into the built package as
`open_forgetting/_shipped/{data,experiments}`, so an installed (non-editable) copy reads them through
importlib.resources (`open_forgetting.core.shipped_path`); a source checkout reads them where they are."""
import shutil
from configparser import ConfigParser
from pathlib import Path
import setuptools
from setuptools.command.build_py import build_py


class BuildWithShippedFiles(build_py):
    "build_py, plus data/ and nbs/experiments/*.ipynb copied into the package as _shipped/."
    def run(self):
        super().run()
        if self.editable_mode: return   # an editable install reads the checkout itself
        target = Path(self.build_lib) / 'open_forgetting' / '_shipped'
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree('data', target / 'data', ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
        (target / 'experiments').mkdir(parents=True)
        for nb in sorted(Path('nbs/experiments').glob('*.ipynb')): shutil.copy2(nb, target / 'experiments' / nb.name)


cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']
requirements = cfg.get('requirements', '').split()
dev_requirements = cfg.get('dev_requirements', '').split()
licenses = {'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License')}
statuses = ['Planning', 'Pre-Alpha', 'Alpha', 'Beta', 'Production/Stable']
lic = licenses[cfg['license']]
min_python = cfg['min_python']
scripts = [o.strip() for o in cfg.get('console_scripts', '').split('\n') if o.strip()]

setuptools.setup(
    name=cfg['lib_name'],
    license=lic[0],
    classifiers=[f"Development Status :: {cfg['status']} - {statuses[int(cfg['status'])]}",
                 f"Intended Audience :: {cfg['audience'].title()}",
                 f"License :: {lic[1]}",
                 f"Natural Language :: {cfg['language'].title()}",
                 f"Programming Language :: Python :: {min_python}"],
    url=cfg['git_url'],
    packages=setuptools.find_packages(include=['open_forgetting', 'open_forgetting.*']),
    include_package_data=True,
    install_requires=requirements,
    extras_require={'dev': dev_requirements},
    python_requires='>=' + min_python,
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    zip_safe=False,
    cmdclass={'build_py': BuildWithShippedFiles},
    entry_points={'console_scripts': scripts, 'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    version=cfg['version'],
    description=cfg['description'],
    author=cfg['author'],
    author_email=cfg['author_email'],
    keywords=cfg['keywords'],
)
